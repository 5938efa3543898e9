"""PNG figures of an eval or replay: confidence traces, confidence histograms, and the
accuracy-tokens trade-off.

    trace_confidence.png   group confidence over tokens per trace, the threshold, prune points
    confidence_hist.png    a trace metric (default: lowest group) of right vs wrong traces
    accuracy_tokens.png    accuracy against tokens, one point per method
    policy_pareto.png      a replay's policies, accuracy against tokens, the Pareto front

matplotlib is an optional extra (`pip install 'deepconf-orchestrator[plot]'`); it is imported
inside the functions, on the non-interactive Agg backend, so importing this module costs
nothing. The functions take records and summaries, not folders; eval.commands finds the files.

    plot_trace_confidence(records, window=64, out=Path("figs/trace_confidence.png"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepconf.confidence import group_confidences
from deepconf.config import METRICS
from deepconf.errors import ConfigError
from deepconf.eval.compare import PolicyRow, pareto_front
from deepconf.eval.report import MethodSummary
from deepconf.trace import TraceRecord, TraceStatus


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "plotting needs matplotlib: pip install 'deepconf-orchestrator[plot]'"
            " (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def plot_trace_confidence(
    records: Sequence[TraceRecord],
    window: int,
    out: Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
    max_traces: int = 40,
) -> Path:
    """Group confidence (sliding mean over `window` tokens, plotted at the window's last
    token) of each trace, coloured by how it ended; pruned traces get an x at pruned_at.
    The threshold defaults to the one recorded on the traces."""
    plt = _pyplot()
    colours = {
        TraceStatus.COMPLETED: "tab:blue",
        TraceStatus.TRUNCATED: "tab:purple",
        TraceStatus.PRUNED: "tab:red",
        TraceStatus.CANCELLED: "tab:gray",
        TraceStatus.FAILED: "black",
    }
    fig, ax = plt.subplots(figsize=(9, 4.5))
    shown: set[TraceStatus] = set()
    for rec in sorted(records, key=lambda r: r.index)[:max_traces]:
        confs = rec.token_confs
        if confs.size == 0:
            continue
        groups = group_confidences(confs, window)  # (n - window + 1,) or one partial group
        x = np.arange(groups.shape[0]) + min(window, confs.shape[0])  # token of group end
        colour = colours.get(rec.status, "tab:blue")
        label = None if rec.status in shown else str(rec.status)
        shown.add(rec.status)
        style = "--" if rec.phase == "warmup" else "-"
        ax.plot(x, groups, style, color=colour, alpha=0.7, linewidth=1, label=label)
        if rec.status is TraceStatus.PRUNED and rec.pruned_at is not None:
            j = min(max(rec.pruned_at - window, 0), groups.shape[0] - 1)
            ax.plot([x[j]], [groups[j]], "x", color="tab:red", markersize=8)
        if threshold is None and rec.threshold is not None:
            threshold = rec.threshold
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle=":", label=f"threshold s = {threshold:.2f}")
    ax.set_xlabel("tokens")
    ax.set_ylabel(f"group confidence (window {window})")
    ax.set_title(title or "Group confidence per trace (dashed: warm-up, x: pruned)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out)


def plot_confidence_histograms(
    right: Sequence[float], wrong: Sequence[float], out: Path, *, metric: str = "lowest"
) -> Path:
    """Histograms of one trace metric for traces whose answer is right and those whose
    answer is wrong (or missing), on shared bins."""
    if not len(right) and not len(wrong):
        raise ConfigError("no graded traces to plot: the histogram needs traces with gold answers")
    plt = _pyplot()
    values = np.concatenate([np.asarray(right, float), np.asarray(wrong, float)])
    bins = np.histogram_bin_edges(values, bins=30)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(right, bins=bins, alpha=0.6, color="tab:green", label=f"correct ({len(right)})")
    ax.hist(wrong, bins=bins, alpha=0.6, color="tab:red", label=f"incorrect ({len(wrong)})")
    ax.set_xlabel(f"{metric} confidence")
    ax.set_ylabel("traces")
    ax.set_title(f"Trace {metric} confidence: correct vs incorrect")
    ax.legend()
    return _save(fig, out)


def accuracy_points(rows: Sequence[MethodSummary]) -> list[tuple[float, float, list[str]]]:
    """(tokens, accuracy %, methods) per distinct point, in first-seen order: offline methods
    share one run's tokens and often its accuracy, so one point may stand for several."""
    points: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        x, y = max(r.tokens, 1.0), 100 * r.accuracy
        points.setdefault((round(x, 6), round(y, 6)), []).append(r.method)
    return [(x, y, names) for (x, y), names in points.items()]


def plot_accuracy_tokens(
    rows: Sequence[MethodSummary], out: Path, *, title: str | None = None
) -> Path:
    """One point per method: total tokens (x, log scale) against accuracy (y).

    Methods are named in a legend beside the axes, one entry per point, not in labels next
    to the points: replays put a dozen settings within a point of accuracy and a few
    percent of tokens, and labels there overlap into an unreadable smear."""
    if not rows:
        raise ConfigError("no method results to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for x, y, names in accuracy_points(rows):
        online = names[0].startswith("deepconf")
        marker = "*" if online else ("s" if names[0].startswith("majority") else "o")
        # "; " between methods: names of replayed settings hold commas themselves.
        label = (
            "; ".join(names) if len(names) <= 4 else f"{'; '.join(names[:4])}; +{len(names) - 4}"
        )
        ax.scatter([x], [y], marker=marker, s=90 if online else 40, label=label, alpha=0.85)
    ax.set_xscale("log")
    ax.margins(x=0.1, y=0.1)
    ax.set_xlabel("tokens (all problems)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Accuracy against tokens per method")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    return _save(fig, out)


def plot_policy_pareto(rows: Sequence[PolicyRow], out: Path, *, title: str | None = None) -> Path:
    """Every policy of a replay comparison as a point (tokens per problem, log x; accuracy
    with its 95%-of-orders interval), the Pareto front joined by a line and listed in the
    legend; the other policies are grey and named beside the axes."""
    if not rows:
        raise ConfigError("no policy results to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    front = pareto_front(rows)
    on_front = {r.policy for r in front}
    for r in rows:
        y = 100 * r.accuracy
        err = [[y - 100 * r.low], [100 * r.high - y]]
        style = {"alpha": 0.9} if r.policy in on_front else {"color": "0.6", "alpha": 0.7}
        ax.errorbar([r.tokens], [y], yerr=err, fmt="o", ms=5, capsize=2, label=r.policy, **style)
    ax.plot([r.tokens for r in front], [100 * r.accuracy for r in front], "-", color="C3", lw=1)
    ax.set_xscale("log")
    ax.margins(x=0.1, y=0.1)
    ax.set_xlabel("tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Policies: accuracy against tokens (line: the Pareto front)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    return _save(fig, out)


# --- from an output folder -------------------------------------------------------------------


def draw_all(
    source: Path, out: Path, *, problem: str | None = None, metric: str = "lowest"
) -> list[Path]:
    """Every figure the folder has data for: an eval --output folder gives all three, a
    replay --output folder (summary.json only) the accuracy plot. Raises ConfigError when
    there is nothing to draw."""
    from deepconf.eval.datasets import load_answers
    from deepconf.eval.grading import Grader
    from deepconf.eval.report import summarise
    from deepconf.eval.runner import read_results, scores_of
    from deepconf.trace import read_traces

    _pyplot()  # fail early, and clearly, without matplotlib
    if metric not in METRICS:
        raise ConfigError(f"--metric must be mean, tail, bottom or lowest, got {metric!r}")
    made: list[Path] = []
    results_path = source / "results.jsonl"
    results = read_results(results_path) if results_path.exists() else []
    if results:
        rows = summarise(scores_of(results))
        made.append(plot_accuracy_tokens(rows, out / "accuracy_tokens.png"))
    elif (source / "summary.json").exists():
        rows = [MethodSummary(**r) for r in json.loads((source / "summary.json").read_text())]
        made.append(plot_accuracy_tokens(rows, out / "accuracy_tokens.png"))
    if (source / "policies.jsonl").exists():  # a replay's policy comparison
        lines = (source / "policies.jsonl").read_text().splitlines()
        policy_rows = [PolicyRow(**json.loads(x)) for x in lines if x.strip()]
        made.append(plot_policy_pareto(policy_rows, out / "policy_pareto.png"))
    traces_dir = source / "traces"
    if traces_dir.is_dir():
        golds = load_answers(str(source)) if results_path.exists() else {}
        offline = sorted(traces_dir.glob("*.offline.jsonl"))
        if offline and golds:
            grader, right, wrong = Grader(), [], []
            for path in offline:
                for stored in read_traces(path):
                    rec, pid = stored.record, str(stored.meta.get("problem_id"))
                    if rec.metrics is None or pid not in golds or not rec.finished:
                        continue
                    ok = grader.grade(rec.answer, golds[pid]).correct
                    (right if ok else wrong).append(rec.metrics.get(metric))
            made.append(
                plot_confidence_histograms(right, wrong, out / "confidence_hist.png", metric=metric)
            )
        made += _draw_traces(traces_dir, out, problem, results)
    if not made:
        raise ConfigError(
            f"{source} has nothing to plot: pass an eval --output folder (results.jsonl,"
            " traces/) or a replay --output folder (summary.json)"
        )
    return made


def _draw_traces(
    traces_dir: Path, out: Path, problem: str | None, results: list[dict[str, Any]]
) -> list[Path]:
    """The per-trace confidence plot of one problem's online-low run (which has a threshold
    and prune points), else online-high, else offline. Without --problem, the run with the
    most pruned traces is drawn: it shows the most."""
    from deepconf.trace import read_traces

    thresholds = {
        (r["problem_id"], run): info.get("threshold")
        for r in results
        for run, info in r.get("runs", {}).items()
    }
    for run in ("online-low", "online-high", "offline"):
        best: tuple[int, str, list[Any]] | None = None
        for path in sorted(traces_dir.glob(f"*.{run}.jsonl")):
            stored = read_traces(path)
            if not stored:
                continue
            pid = str(stored[0].meta.get("problem_id"))
            if problem is not None and pid != problem:
                continue
            pruned = sum(1 for s in stored if s.record.status is TraceStatus.PRUNED)
            if best is None or pruned > best[0]:
                best = (pruned, pid, stored)
        if best is not None:
            _, pid, stored = best
            window = int(stored[0].meta.get("window") or 1)
            title = f"{pid} ({run}): group confidence per trace"
            out_path = out / "trace_confidence.png"
            records = [s.record for s in stored]
            threshold = thresholds.get((pid, run))
            return [
                plot_trace_confidence(records, window, out_path, threshold=threshold, title=title)
            ]
    if problem is not None:
        raise ConfigError(f"no trace file of problem {problem!r} in {traces_dir}")
    return []
