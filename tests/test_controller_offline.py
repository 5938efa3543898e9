"""Offline DeepConf (Algorithm 1) through the controller, and what a solve records: trace
files written as traces end, progress snapshots, the result dict."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from support.fake_backend import FakeBackend, Script, make_config

from deepconf.controller import PROGRESS_INTERVAL_S, DeepConf
from deepconf.trace import FORMULA, TraceStatus, read_traces
from deepconf.voting import OFFLINE_METHODS

# Four low-confidence traces say 1, two confident ones say 2.
OFFLINE_SCRIPTS = {
    0: Script(conf=10.0, answer="1"),
    1: Script(conf=10.0, answer="1"),
    2: Script(conf=10.0, answer="1"),
    3: Script(conf=10.0, answer="1"),
    4: Script(conf=18.0, answer="2"),
    5: Script(conf=19.0, answer="2"),
}


async def test_offline_reports_every_method_and_answers_with_the_configured_one() -> None:
    """Six unpruned traces; methods holds every offline method. Majority says 1 (4 vs 2);
    weighted by mean it is still 1 (40 vs 37); @90 keeps all (10th percentile = 10), so 1;
    @10 keeps only the trace at 19 (90th percentile = 18.5), so 2, and tail@10 is the answer."""
    fake = FakeBackend(dict(OFFLINE_SCRIPTS))
    cfg = make_config(mode="offline", budget=6, concurrency=3, offline_method="tail@10")
    result = await DeepConf(fake, cfg).solve("q")
    assert set(result.methods) == set(OFFLINE_METHODS)
    assert result.methods["majority"] == "1"
    assert result.methods["mean"] == "1" and result.methods["lowest@90"] == "1"
    assert all(result.methods[f"{m}@10"] == "2" for m in ("mean", "tail", "bottom", "lowest"))
    assert result.answer == "2" and [(v.answer, v.count) for v in result.votes] == [("2", 1)]
    assert result.threshold is None and result.mode == "offline"
    assert {t.phase for t in result.traces} == {"offline"}
    assert {t.status for t in result.traces} == {TraceStatus.COMPLETED}
    assert result.tokens.offline == result.tokens.total == 6 * 20


async def test_offline_method_majority_is_honoured() -> None:
    """offline_method=majority makes the plain count the answer."""
    cfg = make_config(mode="offline", budget=6, offline_method="majority")
    result = await DeepConf(FakeBackend(dict(OFFLINE_SCRIPTS)), cfg).solve("q")
    assert result.answer == "1" and result.votes[0].count == 4


async def test_trace_file_grows_as_traces_end_and_round_trips(tmp_path) -> None:
    """Every time a trace ends (seen from on_progress) its line is already on disk; the file
    holds every trace, replay metadata included, and reads back equal to the result."""
    path = tmp_path / "traces.jsonl"
    seen: list[tuple[int, int]] = []

    def on_progress(p):
        ended = p.completed + p.pruned + p.failed + p.cancelled + p.truncated
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        seen.append((ended, lines))

    fake = FakeBackend(
        {5: Script(conf=[20.0] * 4 + [1.0] * 16)},
        default=lambda i: Script(conf=14.0 + i % 3, answer=str(i % 2)),
    )
    cfg = make_config(warmup=4, budget=8, variant="high", sampling={"seed": 7})
    engine = DeepConf(fake, cfg, trace_path=path, on_progress=on_progress)
    result = await engine.solve("q", problem_id="prob-1")
    assert all(ended == lines for ended, lines in seen)
    assert [e for e, _ in seen][-1] == 8

    stored = read_traces(path)
    assert len(stored) == len(result.traces) == 8
    meta = stored[0].meta
    assert meta["problem_id"] == "prob-1" and meta["model"] == "fake-model"
    assert meta["k"] == 20 and meta["window"] == 4 and meta["formula"] == FORMULA
    assert meta["sampling"]["seed"] == 7 and meta["variant"] == "high"
    by_index = {s.record.index: s.record for s in stored}
    for t in result.traces:
        back = by_index[t.index]
        assert (back.status, back.tokens, back.answer, back.seed, back.phase) == (
            t.status,
            t.tokens,
            t.answer,
            t.seed,
            t.phase,
        )
        np.testing.assert_allclose(back.token_confs, t.token_confs, atol=5e-5)
        assert back.metrics == t.metrics
    assert by_index[5].status is TraceStatus.PRUNED
    assert by_index[5].threshold == pytest.approx(result.threshold)


async def test_progress_reports_every_state_change_and_tokens_while_streaming() -> None:
    """Snapshots follow each launch and end (ended counts step 1, 2, ... N, never skipping),
    and a slow 30-token stream (~0.45 s) gets a few throttled mid-stream snapshots with a
    token count between 0 and 30, not one per token."""
    snaps = []
    fake = FakeBackend(default=Script(conf=15.0, n=30, delay=0.015, answer="4"))
    cfg = make_config(warmup=1, budget=1)
    started = time.monotonic()
    await DeepConf(fake, cfg, on_progress=snaps.append).solve("q")
    elapsed = time.monotonic() - started
    mid = [s for s in snaps if s.in_flight == 1 and 0 < s.tokens < 30]
    # The stream sleeps >= 0.45 s, so the 0.1 s throttle lets at least two through; and
    # throttled snapshots are >= 0.1 s apart, however slow a loaded machine makes the run.
    assert 2 <= len(mid) <= elapsed / PROGRESS_INTERVAL_S + 1
    assert snaps[0].launched == 1 and snaps[-1].completed == 1 and snaps[-1].tokens == 30

    snaps.clear()
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))
    await DeepConf(
        fake, make_config(variant="high", concurrency=3), on_progress=snaps.append
    ).solve("q")
    ended = [s.completed for s in snaps]
    assert sorted(set(ended)) == list(range(9)) and ended == sorted(ended)
    assert max(s.in_flight for s in snaps) == 3


async def test_result_dict_is_json_and_leaves_out_token_confs_by_default() -> None:
    """to_dict() is JSON-serialisable with the documented keys; traces carry status, tokens,
    metrics, answer, index and phase but not the per-token confidences unless asked."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))
    result = await DeepConf(fake, make_config(variant="high")).solve("q")
    d = json.loads(json.dumps(result.to_dict()))
    for key in ("answer", "votes", "beta", "threshold", "tokens", "traces", "wall_time"):
        assert key in d
    for key in ("stop_reason", "fallback", "methods", "mode", "variant"):
        assert key in d
    assert d["tokens"] == {"warmup": 80, "online": 80, "offline": 0, "total": 160}
    assert set(d["votes"][0]) == {"answer", "count", "weight"}
    assert d["tokens_majority_estimate"] == 8 * 20
    t0 = d["traces"][0]
    assert {"status", "tokens", "metrics", "answer", "index", "phase"} <= set(t0)
    assert "token_confs" not in t0
    assert len(result.to_dict(token_confs=True)["traces"][0]["token_confs"]) == 20


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of deepconf/offline.py that every test above let through.


async def test_every_offline_method_names_a_class_as_the_problem_first_saw_it() -> None:
    """All thirteen votes share the solve's AnswerKeys: 1/2 first seen as 0.5 is "0.5" in
    every method's leader and row, and plain majority rides beside as majority_votes."""
    scripts = {0: Script(conf=10.0, answer="0.5")}
    scripts |= {i: Script(conf=18.0, answer="1/2") for i in range(1, 4)}
    cfg = make_config(mode="offline", budget=4, concurrency=1, offline_method="lowest@10")
    result = await DeepConf(FakeBackend(scripts), cfg).solve("q")
    assert set(result.methods.values()) == {"0.5"}
    assert [(v.answer, v.count) for v in result.votes] == [("0.5", 3)]  # the top 10% of 4
    assert [(v.answer, v.count) for v in result.majority_votes] == [("0.5", 4)]
    assert result.offline_method == "lowest@10" and result.fallback is None


async def test_an_empty_offline_vote_says_which_method_was_empty() -> None:
    """No trace wrote an answer: the fallback sentence names the configured method."""
    scripts = {i: Script(conf=12.0, answer=None) for i in range(3)}
    cfg = make_config(mode="offline", budget=3, offline_method="mean@90")
    result = await DeepConf(FakeBackend(scripts), cfg).solve("q")
    assert result.answer is None and result.offline_method == "mean@90"
    assert result.fallback == (
        "The mean@90 vote is empty, and no trace that ran to completion gave an answer."
    )


async def test_offline_progress_carries_the_provisional_majority() -> None:
    """While offline traces end, each snapshot's leader is plain majority so far (every
    trace is tallied as it ends), before the final vote."""
    leaders: list[str | None] = []
    cfg = make_config(mode="offline", budget=6, concurrency=1)
    await DeepConf(
        FakeBackend(dict(OFFLINE_SCRIPTS)), cfg, on_progress=lambda p: leaders.append(p.leader)
    ).solve("q")
    assert "1" in leaders
