"""The shipped bundled model, end to end: DeepConf solves held-out problems of its task
family in process, and every trace record is consistent with what the solve reported.

These run the real 1.8M-parameter model on the numpy engine (a few thousand tokens in all).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepconf import DeepConf
from deepconf.backends.bundled import BundledBackend
from deepconf.cli import app
from deepconf.cli_common import backend_defaults, config_from_flags
from deepconf.confidence import trace_metrics
from deepconf.eval import task_chain
from deepconf.trace import read_traces


@pytest.fixture(scope="module")
def problems():
    """Held-out problems at an easy difficulty the model masters (2-digit chains)."""
    return task_chain.problems(task_chain.Difficulty(steps=3, digits=2), 3, split="test")


async def test_solves_held_out_problems_and_records_every_trace(problems, tmp_path):
    """Online DeepConf on the shipped model answers held-out 2-digit chains correctly, and
    the trace file holds one self-contained record per trace: status, token count equal to
    its confidences, metrics recomputable from them, the card's window, and the answer."""
    backend = BundledBackend()
    config = config_from_flags(
        defaults=backend_defaults(backend), budget=24, warmup=8, seed=0, concurrency=8
    )
    assert config.confidence.window == backend.defaults["window"]
    path = tmp_path / "traces.jsonl"
    engine = DeepConf(backend, config, trace_path=path)
    try:
        for p in problems:
            result = await engine.solve(p.expression, problem_id=p.problem_id)
            assert result.answer == str(p.answer), (p.expression, result.votes)
            assert result.tokens.total == sum(t.tokens for t in result.traces)
    finally:
        await backend.aclose()

    stored = read_traces(path)
    assert len(stored) == sum(1 for _ in path.open()) >= 8 * len(problems)
    assert {s.meta["problem_id"] for s in stored} == {p.problem_id for p in problems}
    for s in stored:
        rec, meta = s.record, s.meta
        assert meta["window"] == config.confidence.window and meta["k"] == 20
        assert meta["model"] == backend.model
        assert rec.tokens == len(rec.token_confs) > 0
        assert str(rec.status) in {"completed", "pruned", "truncated", "cancelled"}
        if str(rec.status) == "completed":
            again = trace_metrics(rec.token_confs, window=meta["window"], tail=meta["tail"])
            assert np.isclose(again.lowest, rec.metrics.lowest, atol=1e-3)
            assert rec.answer is not None and "\\boxed" in rec.text


def test_readme_command_prints_the_answer():
    """The README's first command: `deepconf solve` on the bundled model, no server."""
    r = CliRunner().invoke(app, ["solve", "--seed", "0", "Compute 23+45-17."])
    assert r.exit_code == 0, r.output
    assert "answer: 51" in r.output


def test_prompt_outside_the_family_gets_a_note():
    """A prompt the bundled model was never trained on is still run, with a note that says
    what the model knows and how to use a real server."""
    r = CliRunner().invoke(
        app, ["solve", "--budget", "2", "--warmup", "2", "What is the capital of France?"]
    )
    assert r.exit_code == 0, r.output
    assert "only knows" in r.output and "--base-url" in r.output


def test_json_record_of_a_bundled_solve():
    """--json on the bundled model prints the result record with per-trace statuses."""
    r = CliRunner().invoke(app, ["solve", "--seed", "1", "--json", "12+34"])
    record = json.loads(r.stdout)
    assert record["answer"] == "46"
    assert {t["phase"] for t in record["traces"]} >= {"warmup"}
