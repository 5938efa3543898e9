"""Plots: each figure renders a valid PNG; a missing matplotlib is a clear error; the
eval, replay and plot commands work end to end on a fake backend."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import typer
from support.fake_backend import FakeBackend, Script
from typer.testing import CliRunner

import deepconf.eval.commands as commands
from deepconf.backend import TokenBatch, TraceRequest
from deepconf.confidence import trace_metrics
from deepconf.errors import ConfigError
from deepconf.eval.plots import (
    draw_all,
    plot_accuracy_tokens,
    plot_confidence_histograms,
    plot_trace_confidence,
)
from deepconf.eval.replay_command import replay_command
from deepconf.eval.report import MethodSummary
from deepconf.trace import TraceRecord, TraceStatus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
        assert img.size[0] > 100 and img.size[1] > 100


def record(i: int, confs: list[float], status: TraceStatus, pruned_at: int | None = None):
    c = np.asarray(confs)
    return TraceRecord(
        index=i,
        phase="warmup" if i < 2 else "online",
        status=status,
        tokens=len(c),
        token_confs=c,
        answer="1",
        metrics=trace_metrics(c, 4, 4),
        pruned_at=pruned_at,
    )


def test_each_figure_is_a_valid_png(tmp_path: Path) -> None:
    """Trace confidence (with threshold and prune marks), histograms and the accuracy plot
    each write a PNG that PIL can read."""
    records = [
        record(0, [18.0] * 12, TraceStatus.COMPLETED),
        record(1, [17.0] * 3, TraceStatus.COMPLETED),  # shorter than the window
        record(2, [18.0] * 4 + [9.0] * 4, TraceStatus.PRUNED, pruned_at=8),
    ]
    assert_png(plot_trace_confidence(records, 4, tmp_path / "a.png", threshold=16.0))
    assert_png(plot_confidence_histograms([17.0, 18.0, 18.5], [12.0, 9.0], tmp_path / "b.png"))
    rows = [
        MethodSummary("majority@8", 0.5, 800, 2, 0.0, 0, 0),
        MethodSummary("deepconf-low", 0.6, 300, 2, 0.625, 0, 0),
    ]
    assert_png(plot_accuracy_tokens(rows, tmp_path / "c.png"))
    with pytest.raises(ConfigError):
        plot_confidence_histograms([], [], tmp_path / "d.png")


def test_accuracy_plot_names_methods_in_a_legend_beside_the_axes(tmp_path: Path, monkeypatch):
    """A replay's dozen settings crowd one corner (the README figure had labels printed over
    each other there): no label is drawn inside the axes; the legend, right of the axes, names
    every method once, points that coincide sharing one entry."""
    import deepconf.eval.plots as plots

    shown = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out: shown.setdefault("fig", fig) and out)
    rows = [MethodSummary("majority@64", 0.74, 437_100, 100, 0.0, 0, 0)]
    rows += [MethodSummary(m, 0.74, 437_100, 100, 0.0, 0, 0) for m in ("lowest@10", "tail@90")]
    settings = [(0.9, 16), (0.95, 16), (0.9, 8), (0.95, 8)]
    for i, (tau, w) in enumerate(settings):
        name = f"deepconf-high (tau={tau}, W={w})"
        rows.append(MethodSummary(name, 0.73 + 0.001 * i, 270_000 + 9_000 * i, 100, 0.38, 0, 0))
    plot_accuracy_tokens(rows, tmp_path / "c.png")
    fig = shown["fig"]
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    legend = ax.get_legend()
    names = [t.get_text() for t in legend.get_texts()]
    assert names[0] == "majority@64; lowest@10; tail@90"
    assert sorted(n for entry in names for n in entry.split("; ")) == sorted(r.method for r in rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_missing_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    """Without matplotlib, plotting fails with the install command, not a traceback."""
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'deepconf-orchestrator\[plot\]'"):
        plot_confidence_histograms([1.0], [2.0], tmp_path / "x.png")


class PromptFake(FakeBackend):
    """Problem n: three traces in four answer n at confidence ~18 (the fourth answers n+1
    at ~11, and dips low enough to be pruned online)."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        self.requests.append(request)
        n = int(str(request.prompt).split()[-1])
        rng = np.random.default_rng(n * 1000 + request.index)
        wrong = request.index % 4 == 3
        confs = (11.0 if wrong else 18.0) + rng.integers(-2, 3, size=12 + n) / 2
        return self._stream(request.index, Script(conf=confs.tolist(), answer=str(n + wrong)))


def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("eval")(commands.eval_command)
    cli.command("replay")(replay_command)
    cli.command("plot")(commands.plot_command)
    return cli


def test_eval_replay_plot_commands_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """eval writes results, traces, report.md and summary.json; replay reads the folder and
    prints the sweep; plot draws all three PNGs; a rerun resumes with nothing to do."""
    monkeypatch.setattr(commands, "backend_from_flags", lambda *a, **k: PromptFake())
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"q {i}", "answer": i}) + "\n" for i in range(4))
    )
    out = tmp_path / "out"
    runner = CliRunner()
    args = [
        "eval",
        "--dataset",
        str(data),
        "--output",
        str(out),
        "--budget",
        "8",
        "--warmup",
        "4",
        "--window",
        "4",
        "--methods",
        "pass@1,majority,tail@10,online-low",
    ]
    res = runner.invoke(app(), args)
    assert res.exit_code == 0, res.output
    assert "deepconf-low" in res.output and "majority@8" in res.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    summary = {r["method"]: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["majority@8"]["accuracy"] == 1.0 and summary["pass@1"]["accuracy"] == 0.75
    assert (out / "report.md").exists()

    res = runner.invoke(app(), args)  # resume: every problem is done
    assert res.exit_code == 0 and len((out / "results.jsonl").read_text().splitlines()) == 4
    res = runner.invoke(app(), [*args[:-1], "pass@1"])
    assert res.exit_code == 1 and "other settings" in res.output

    rep = tmp_path / "rep"
    res = runner.invoke(
        app(),
        [
            "replay",
            str(out),
            "--tau",
            "0.9,1.0",
            "--warmup",
            "2,4",
            "--repeats",
            "8",
            "--output",
            str(rep),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "deepconf-high (τ=0.9, W=2)" in res.output
    assert (
        len(json.loads((rep / "summary.json").read_text())) == 1 + 13 + 8
    )  # pass@1, 13 offline methods, 2 etas x 2 taus x 2 warm-ups

    res = runner.invoke(app(), ["plot", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("accuracy_tokens.png", "confidence_hist.png", "trace_confidence.png"):
        assert_png(out / "plots" / name)
    res = runner.invoke(app(), ["plot", str(rep), "--out", str(tmp_path / "p2")])
    assert res.exit_code == 0 and (tmp_path / "p2" / "accuracy_tokens.png").exists()


def test_plot_of_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    """A folder with nothing to draw fails with a message saying what to pass."""
    with pytest.raises(ConfigError, match="nothing to plot"):
        draw_all(tmp_path, tmp_path / "plots")


def test_replay_command_errors_are_one_line_messages(tmp_path: Path) -> None:
    """A missing trace file, or traces without gold answers, end with a message and exit
    code 1, never a traceback."""
    runner = CliRunner()
    res = runner.invoke(app(), ["replay", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 1 and "does not exist" in res.output
    line = {
        "problem_id": "x",
        "window": 4,
        "index": 0,
        "phase": "offline",
        "status": "completed",
        "tokens": 2,
        "token_confs": [1.0, 2.0],
        "answer": "3",
    }
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps(line) + "\n")
    res = runner.invoke(app(), ["replay", str(traces)])
    assert res.exit_code == 1 and "no gold answers" in res.output
    answers = tmp_path / "gold.jsonl"
    answers.write_text(json.dumps({"id": "x", "problem": "?", "answer": "3"}) + "\n")
    res = runner.invoke(
        app(), ["replay", str(traces), "--answers", str(answers), "--warmup", "1", "--repeats", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "deepconf-low" in res.output and "100.0%" in res.output
