"""Report tables: per method, accuracy, tokens, and tokens saved against majority voting.

The eval runner and the replay simulator both turn their outcomes into `Score`s (one per
method and problem; `correct` and `tokens` may be expectations over resampled runs), and
this module aggregates them into the paper's Table 10 layout, plus the list of answers that
could not be parsed for grading. Beside it, for an eval's live runs: how often each DeepConf
method disagreed with plain majority over the same traces, and who was right then (the
safety net users check confidence against). Rendering only: nothing here runs or grades.

    rows = summarise(scores)
    console.print(rich_table(rows, title="chain s6d2, 100 problems"))
    Path("report.md").write_text(markdown_table(rows) + unparsed_markdown(scores))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True, slots=True)
class Score:
    """One method on one problem.

    correct: 1.0 / 0.0 for a single run; the expected value for pass@1 and for replays.
    tokens: tokens the method spent on the problem (expected, for replays).
    status: the grade (correct | wrong | no_answer | unparsed), or "expected" for averages.
    """

    method: str
    problem_id: str
    correct: float
    tokens: float
    answer: str | None = None
    status: str = "expected"
    unparsed: int = 0  # answers behind this score that math-verify could not read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MethodSummary:
    method: str
    accuracy: float  # mean of `correct` over problems, 0..1
    tokens: float  # summed over problems
    problems: int
    saved: float | None  # 1 - tokens / baseline tokens (None without a baseline)
    no_answer: int
    unparsed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_method(methods: Iterable[str]) -> str | None:
    """The majority-vote method the savings are measured against (majority@N, majority)."""
    return next((m for m in methods if m.startswith("majority")), None)


def summarise(scores: Iterable[Score], baseline: str | None = None) -> list[MethodSummary]:
    """One row per method, in first-seen order. Savings compare totals over the problems
    both the method and the baseline have (a partial run compares like with like)."""
    by_method: dict[str, list[Score]] = {}
    for s in scores:
        by_method.setdefault(s.method, []).append(s)
    baseline = baseline if baseline is not None else baseline_method(by_method)
    base = {s.problem_id: s.tokens for s in by_method.get(baseline or "", [])}
    rows = []
    for method, items in by_method.items():
        tokens = math.fsum(s.tokens for s in items)
        shared = [s for s in items if s.problem_id in base]
        base_tokens = math.fsum(base[s.problem_id] for s in shared)
        saved = None
        if shared and base_tokens > 0:
            saved = 1.0 - math.fsum(s.tokens for s in shared) / base_tokens
        rows.append(
            MethodSummary(
                method=method,
                accuracy=math.fsum(s.correct for s in items) / len(items),
                tokens=tokens,
                problems=len(items),
                saved=saved,
                no_answer=sum(1 for s in items if s.status == "no_answer"),
                unparsed=sum(s.unparsed for s in items),
            )
        )
    return rows


def _tokens(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:,.0f}"


def _row_cells(r: MethodSummary) -> list[str]:
    # + 0.0 turns -0.0 into 0.0: the baseline itself shows +0.0%, not -0.0%.
    saved = "—" if r.saved is None else f"{-r.saved + 0.0:+.1%}"
    return [
        r.method,
        f"{r.accuracy:.1%}",
        _tokens(r.tokens),
        saved,
        str(r.problems),
        str(r.no_answer),
        str(r.unparsed),
    ]


HEADERS = (
    "method",
    "accuracy",
    "tokens",
    "Δ tokens vs majority",
    "problems",
    "no answer",
    "unparsed",
)


def rich_table(rows: Sequence[MethodSummary], title: str | None = None) -> Table:
    table = Table(title=title, show_edge=False)
    for i, h in enumerate(HEADERS):
        # The method name never wraps: narrow terminals squeeze the number columns instead.
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*_row_cells(r))
    return table


def markdown_table(rows: Sequence[MethodSummary]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def unparsed_scores(scores: Iterable[Score]) -> list[Score]:
    """Scores whose grade fell back to string comparison (math-verify could not read an
    answer): listed in the report so none is silently counted right or wrong."""
    return [s for s in scores if s.unparsed or s.status == "unparsed"]


def unparsed_markdown(scores: Iterable[Score]) -> str:
    items = unparsed_scores(scores)
    if not items:
        return "\nAll answers were parsed for grading.\n"
    lines = [f"\n{len(items)} grade(s) fell back to string comparison (unparsed answers):\n"]
    lines += [
        f"- {s.problem_id} [{s.method}]: {s.answer!r} -> {'right' if s.correct else 'wrong'}"
        for s in items
    ]
    return "\n".join(lines) + "\n"


def unjudged_of(results: Iterable[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(problem, run, answers) for each run whose vote compared answers as plain text because
    math-verify ran out of time (a run summary's `unjudged_answers`): equal values written
    differently may have counted apart there, so the report names them."""
    return [
        (str(line["problem_id"]), run, int(summary.get("unjudged_answers") or 0))
        for line in results
        for run, summary in (line.get("runs") or {}).items()
        if summary.get("unjudged_answers")
    ]


def unjudged_markdown(unjudged: Sequence[tuple[str, str, int]]) -> str:
    if not unjudged:
        return ""
    lines = [
        f"\n{len(unjudged)} vote(s) compared answers as plain text (math-verify ran out of"
        " time), so equal values written differently may have counted apart:\n"
    ]
    lines += [f"- {pid} [{run}]: {n} answer(s)" for pid, run, n in unjudged]
    return "\n".join(lines) + "\n"


# --- DeepConf against plain majority over the same traces --------------------------------------


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One method's answers against plain majority's over the same traces, over problems.

    majority_right / method_right count only the runs where the two answers differed."""

    method: str
    runs: int
    disagreed: int
    method_right: int
    majority_right: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def method_majority_answers(results: Iterable[dict[str, Any]]) -> Iterable[tuple[str, Any, Any]]:
    """(method, its answer, majority's answer over the same traces) per run in results lines:
    each live online run (deepconf-low/-high against the majority of the traces it ran to
    the end), and each offline method of the offline run (against majority@N)."""
    for line in results:
        for run, summary in (line.get("runs") or {}).items():
            methods = summary.get("methods") or {}
            if run == "offline":
                for method, answer in methods.items():
                    if method != "majority":
                        yield method, answer, methods.get("majority")
            else:
                label = "deepconf-" + run.removeprefix("online-")
                yield label, summary.get("answer"), methods.get("majority")


def summarise_disagreements(
    graded: Iterable[tuple[str, bool, bool, bool]],
) -> list[Disagreement]:
    """Rows from (method, disagreed, method right, majority right) per run, first-seen order."""
    rows: dict[str, list[int]] = {}
    for method, disagreed, method_right, majority_right in graded:
        r = rows.setdefault(method, [0, 0, 0, 0])
        r[0] += 1
        if disagreed:
            r[1] += 1
            r[2] += int(method_right)
            r[3] += int(majority_right)
    return [Disagreement(m, *counts) for m, counts in rows.items()]


DISAGREEMENT_HEADERS = (
    "method",
    "runs",
    "disagreed with majority",
    "method right",
    "majority right",
)


def _disagreement_cells(d: Disagreement) -> list[str]:
    share = f" ({d.disagreed / d.runs:.0%})" if d.runs else ""
    return [
        d.method,
        str(d.runs),
        f"{d.disagreed}{share}",
        str(d.method_right),
        str(d.majority_right),
    ]


def disagreement_table(rows: Sequence[Disagreement]) -> Table:
    table = Table(
        title="against plain majority over the same traces (right: when they disagreed)",
        show_edge=False,
    )
    for i, h in enumerate(DISAGREEMENT_HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for d in rows:
        table.add_row(*_disagreement_cells(d))
    return table


def disagreement_markdown(rows: Sequence[Disagreement]) -> str:
    if not rows:
        return ""
    lines = [
        "\n## Against plain majority over the same traces\n",
        "Runs where the method's answer differed from plain majority's over the same traces,"
        " and how often each was right in those runs.\n",
        "| " + " | ".join(DISAGREEMENT_HEADERS) + " |",
        "|" + "---|" * len(DISAGREEMENT_HEADERS),
    ]
    lines += ["| " + " | ".join(_disagreement_cells(d)) + " |" for d in rows]
    return "\n".join(lines) + "\n"
