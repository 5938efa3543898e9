"""The eval runner: every method on every problem of a dataset, resumable, traces saved.

One offline run of N traces per problem gives pass@1 (expected over its traces), majority@N
and every offline DeepConf method; DeepConf-low and -high run live through the controller in
online mode. Problems run concurrently, and all their traces share one global limit on
streams in flight (`LimitedBackend`, a semaphore around the backend).

Output folder:
    run.json              the settings; a rerun with other settings is refused (written
                          atomically; one cut off by an older version is named, not a traceback)
    results.jsonl         one line per finished problem, appended and flushed at once
    traces/<id>.<run>.jsonl   every trace, written by the controller as it ends
A rerun with the same folder skips the problems in results.jsonl; a kill -9 loses only the
problems in flight (a cut-off last line is dropped, their trace files are rewritten).

    summary = await run_eval(backend, problems, config, parse_methods("pass@1,majority,online-low"),
                             Path("out"), max_traces=64)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepconf.backend import Backend, TokenBatch, TraceRequest
from deepconf.config import DeepConfConfig
from deepconf.errors import ConfigError
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.grading import Grader
from deepconf.eval.report import Score
from deepconf.result import json_default
from deepconf.voting import OFFLINE_METHODS

ONLINE_METHODS = ("online-low", "online-high")
_ALIASES = {
    "deepconf-low": "online-low",
    "deepconf-high": "online-high",
    "low": "online-low",
    "high": "online-high",
    "pass@1": "pass@1",
}
DEFAULT_METHODS = "pass@1,majority,offline,online-low,online-high"


class LimitedBackend:
    """A Backend whose streams wait for a shared semaphore: at most `limit` traces stream at
    once across every solve that uses it. Opening and closing go to the wrapped backend,
    except `aclose`, which the runner does once for all problems."""

    def __init__(self, inner: Backend, semaphore: asyncio.Semaphore) -> None:
        self.inner = inner
        self.semaphore = semaphore

    @property
    def model(self) -> str:
        return self.inner.model

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        """Shared: the owner closes the wrapped backend itself."""

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        async with self.semaphore, contextlib.aclosing(self.inner.stream(request)) as stream:
            async for batch in stream:
                yield batch


def parse_methods(text: str) -> list[str]:
    """'pass@1,majority,offline,online-low' -> canonical names. 'offline' expands to every
    offline DeepConf method (each metric weighted, and at eta 10 and 90)."""
    out: list[str] = []
    for raw in filter(None, (m.strip() for m in text.split(","))):
        name = _ALIASES.get(raw, raw)
        if name.startswith("majority@"):
            name = "majority"  # N is the --budget
        names = [m for m in OFFLINE_METHODS if m != "majority"] if name == "offline" else [name]
        for n in names:
            if n not in OFFLINE_METHODS and n not in ONLINE_METHODS and n != "pass@1":
                raise ConfigError(
                    f"unknown method {raw!r}: use pass@1, majority, offline (all offline"
                    f" DeepConf methods), one of {', '.join(OFFLINE_METHODS[1:])},"
                    " online-low or online-high"
                )
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError("--methods is empty: name at least one method")
    return out


def trace_file(output: Path, problem_id: str, run: str) -> Path:
    """A file name per problem and run: readable, and unique even when ids differ only in
    characters a file name cannot hold."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", problem_id)[:80]
    digest = hashlib.blake2b(problem_id.encode(), digest_size=4).hexdigest()
    return output / "traces" / f"{safe}-{digest}.{run}.jsonl"


# --- results file ----------------------------------------------------------------------------


def read_results(path: Path) -> list[dict[str, Any]]:
    """Finished problems in a results file. A cut-off last line (a kill mid-write) is cut
    from the file so the next append starts on a fresh line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1  # bytes up to the last complete line
    if keep < len(raw):
        with path.open("r+b") as f:
            f.truncate(keep)
    rows = []
    for lineno, line in enumerate(raw[:keep].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} line {lineno} is not valid JSON ({exc}); fix or delete that line to"
                " resume (its problem will be rerun)"
            ) from exc
    return rows


def check_manifest(output: Path, manifest: dict[str, Any]) -> None:
    """Write run.json, or check that an existing one has the same settings."""
    path = output / "run.json"
    if path.exists():
        old = read_manifest(path)
        diff = setting_differences(old, manifest)
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:4])
            raise ConfigError(
                f"{output} holds a run with other settings ({shown}): use a new --output"
                " folder, or rerun with the same settings to resume"
            )
        return
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True))


def read_manifest(path: Path) -> dict[str, Any]:
    """run.json's settings; a file cut off or emptied (a kill between open and write, before
    writes were atomic, or a hand edit) is a ConfigError that says how to go on."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "it is empty" if path.stat().st_size == 0 else f"{exc}"
        old = None
    else:
        reason = "it holds no settings object"
    if not isinstance(old, dict):
        raise ConfigError(
            f"{path} cannot be read ({reason}): it was cut off while being written or edited."
            f" Delete it to resume this folder with the settings given now (results.jsonl is"
            f" kept), or use a new --output folder"
        )
    return old


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a rerun after a kill) finds the old file
    or the new one, never a part: a temporary file beside it, flushed to disk, then renamed
    over it (a rename within a folder is atomic). One writer per folder, as eval has: the
    temporary name is fixed, so what a killed writer left is overwritten by the next."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def setting_differences(old: Any, new: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted setting, old value, new value) for each leaf that differs, e.g.
    ("config.sampling.temperature", 0.6, 1.0): the setting to name, not its section."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += setting_differences(
                old.get(key), new.get(key), f"{where}.{key}" if where else key
            )
        return out
    return [] if old == new else [(where, old, new)]


def manifest_of(
    dataset: str,
    template: str | None,
    methods: Sequence[str],
    config: Any,
    *,
    shard: str | None = None,
) -> dict:
    # Concurrency changes how fast, not what: a resume may use other limits.
    cfg = config.model_dump(mode="json", exclude={"concurrency"})
    manifest = {
        "dataset": dataset,
        "prompt_template": template,
        "methods": list(methods),
        "config": cfg,
    }
    if shard is not None:
        # Only a shard names one, so folders written before shards existed still resume;
        # eval-merge (eval/shards.py) drops it, so a merged folder resumes unsharded.
        manifest["shard"] = shard
    return manifest


# --- one problem -----------------------------------------------------------------------------


@dataclass
class EvalContext:
    backend: Backend  # the limited, shared backend
    config: DeepConfConfig
    methods: Sequence[str]
    output: Path
    grader: Grader


async def eval_problem(ctx: EvalContext, problem: EvalProblem) -> dict[str, Any]:
    """Run the problem's methods; return its results line (scores and run summaries)."""
    from deepconf.controller import DeepConf

    scores: list[Score] = []
    runs: dict[str, Any] = {}
    offline = [m for m in ctx.methods if m not in ONLINE_METHODS]
    pid, gold = problem.problem_id, problem.answer
    if offline:
        config = ctx.config.model_copy(update={"mode": "offline"})
        path = _fresh(trace_file(ctx.output, pid, "offline"))
        result = await DeepConf(ctx.backend, config, trace_path=path).solve(
            problem.prompt, problem_id=pid
        )
        runs["offline"] = _run_summary(result, path)
        scores += _offline_scores(ctx, problem, result, offline)
    for method in (m for m in ctx.methods if m in ONLINE_METHODS):
        variant = method.removeprefix("online-")
        config = ctx.config.model_copy(update={"mode": "online", "variant": variant})
        path = _fresh(trace_file(ctx.output, pid, method))
        result = await DeepConf(ctx.backend, config, trace_path=path).solve(
            problem.prompt, problem_id=pid
        )
        runs[method] = _run_summary(result, path)
        scores.append(
            _run_score(ctx, f"deepconf-{variant}", pid, gold, result.answer, result.tokens.total)
        )
    return {
        "problem_id": pid,
        "gold": gold,
        "scores": [s.to_dict() for s in scores],
        "runs": runs,
    }


def _fresh(path: Path) -> Path:
    # Traces of an attempt that was killed mid-problem would mix into this attempt's pool.
    path.unlink(missing_ok=True)
    return path


def _offline_scores(
    ctx: EvalContext, problem: EvalProblem, result: Any, methods: Sequence[str]
) -> list[Score]:
    pid, gold = problem.problem_id, problem.answer
    tokens = result.tokens.total
    scores = []
    ended = [t for t in result.traces if t.finished]
    if "pass@1" in methods and ended:
        grades = [ctx.grader.grade(t.answer, gold) for t in ended]
        scores.append(
            Score(
                "pass@1",
                pid,
                math.fsum(g.correct for g in grades) / len(grades),
                math.fsum(t.tokens for t in ended) / len(ended),
                None,
                "expected",
                sum(g.status == "unparsed" for g in grades),
            )
        )
    for m in methods:
        if m == "pass@1":
            continue
        label = f"majority@{ctx.config.budget}" if m == "majority" else m
        scores.append(_run_score(ctx, label, pid, gold, result.methods.get(m), tokens))
    return scores


def _run_score(
    ctx: EvalContext, label: str, pid: str, gold: str, answer: str | None, tokens: float
) -> Score:
    """The graded score of one method's answer from one live run."""
    grade = ctx.grader.grade(answer, gold)
    unparsed = int(grade.status == "unparsed")
    return Score(label, pid, float(grade.correct), tokens, answer, grade.status, unparsed)


def _run_summary(result: Any, path: Path) -> dict[str, Any]:
    d = result.to_dict()
    d.pop("traces", None)
    d["trace_file"] = str(path.name)
    return d


# --- the whole dataset -------------------------------------------------------------------------


ResultCallback = Callable[[dict[str, Any]], None]


async def run_eval(
    backend: Backend,
    problems: Sequence[EvalProblem],
    config: DeepConfConfig,
    methods: Sequence[str],
    output: Path,
    *,
    max_traces: int = 64,
    parallel: int = 4,
    on_result: ResultCallback | None = None,
    claim: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the problems not yet in output/results.jsonl; return every results line,
    old and new. `on_result` sees each new line as it is written (progress views). With
    `claim` (eval --workers' workers), a problem runs only if claim(its id) is True when
    its turn comes: the problems are offered in order, `parallel` at a time."""
    if max_traces < 1 or parallel < 1:
        raise ConfigError("--max-traces and --parallel must be at least 1")
    if any(m in ONLINE_METHODS for m in methods) and config.warmup > config.budget:
        raise ConfigError(
            f"warmup ({config.warmup}) exceeds the budget ({config.budget}): online methods"
            " count warm-up traces in the budget, so raise --budget or lower --warmup"
        )
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.jsonl"
    done = read_results(results_path)
    finished = {r["problem_id"] for r in done}
    todo = [p for p in problems if p.problem_id not in finished]
    limited = LimitedBackend(backend, asyncio.Semaphore(max_traces))
    ctx = EvalContext(limited, config, methods, output, Grader())
    problem_slots = asyncio.Semaphore(parallel)
    await backend.open()
    with results_path.open("a", encoding="utf-8") as out:

        async def one(problem: EvalProblem) -> None:
            async with problem_slots:
                if claim is not None and not claim(problem.problem_id):
                    return  # another worker has it
                line = await eval_problem(ctx, problem)
            # One write + flush per problem: a kill loses at most the problems in flight.
            out.write(json.dumps(line, default=json_default) + "\n")
            out.flush()
            done.append(line)
            if on_result is not None:
                on_result(line)

        try:
            async with asyncio.TaskGroup() as tg:
                for problem in todo:
                    tg.create_task(one(problem), name=f"problem-{problem.problem_id}")
        except BaseExceptionGroup as group:
            # One problem's failure (a server that went away) cancels the others; raise it
            # plainly so the CLI prints its message. Finished problems are already saved.
            raise group.exceptions[0] from None
    return done


def scores_of(results: Sequence[dict[str, Any]]) -> list[Score]:
    return [Score(**s) for r in results for s in r["scores"]]
