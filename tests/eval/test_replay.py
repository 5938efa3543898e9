"""Replay: the simulator against its slow reference, against the live controller, and the
expectations it reports."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from support.fake_backend import FakeBackend, Script

from deepconf.config import ConfidenceConfig, DeepConfConfig
from deepconf.controller import DeepConf
from deepconf.errors import ConfigError
from deepconf.eval.replay import (
    OnlineParams,
    Pool,
    PoolTrace,
    _Grades,
    expected_offline,
    expected_online,
    load_pools,
    online_grid,
    replay_scores,
    simulate_online,
    simulate_order,
    simulate_order_reference,
)
from deepconf.voting import method_vote

WINDOW = 8


def make_scripts(seed: int, n: int) -> list[Script]:
    """Traces whose confidence (multiples of 1/4, exact in binary and in trace files) sits
    at a per-trace level with an optional dip; confident traces mostly answer 7."""
    rng = np.random.default_rng(seed)
    scripts = []
    for _ in range(n):
        length = int(rng.integers(4, 40))  # some shorter than the window: never prunable
        level = float(rng.choice([13.0, 15.0, 17.0, 19.0]))
        confs = level + rng.integers(-4, 5, size=length) / 4.0
        if rng.random() < 0.4 and length > WINDOW:
            start = int(rng.integers(0, length - 4))
            confs[start : start + int(rng.integers(2, 10))] -= float(rng.choice([2.0, 4.0]))
        answer = "7" if rng.random() < (level - 11) / 9 else str(rng.choice(["3", "5", "11"]))
        if rng.random() < 0.1:
            answer = None
        scripts.append(Script(conf=confs.tolist(), answer=answer))
    return scripts


def pool_of(scripts: list[Script], pid: str = "p") -> Pool:
    traces = [PoolTrace(s.answer, np.asarray(s.conf, dtype=np.float64)) for s in scripts]
    return Pool(pid, traces, {"window": WINDOW})


async def write_offline(scripts: list[Script], path: Path, pid: str) -> None:
    config = DeepConfConfig(
        mode="offline",
        budget=len(scripts),
        concurrency=1,
        confidence=ConfidenceConfig(window=WINDOW, tail=WINDOW),
    )
    fake = FakeBackend(dict(enumerate(scripts)))
    await DeepConf(fake, config, trace_path=path).solve("q", problem_id=pid)


def live_config(params: OnlineParams) -> DeepConfConfig:
    """The live controller's config for a simulation's params: concurrency 1, the test
    window (tail = window), so live and replay meet the traces in the same order."""
    assert params.eta in (10, 90), "live variants keep 10% (low) or 90% (high)"
    return DeepConfConfig(
        mode="online",
        variant="low" if params.eta == 10 else "high",
        budget=params.budget,
        warmup=params.warmup,
        tau=params.tau,
        token_budget=params.token_budget,
        concurrency=1,
        confidence=ConfidenceConfig(window=WINDOW, tail=WINDOW),
    )


PARAMS = [
    OnlineParams(warmup=4, eta=10, tau=0.95, budget=24),
    OnlineParams(warmup=4, eta=90, tau=0.95, budget=24),
    OnlineParams(warmup=8, eta=90, tau=0.8, budget=30),
    OnlineParams(warmup=3, eta=10, tau=1.0, budget=30, token_budget=200),
    OnlineParams(warmup=6, eta=90, tau=1.0, budget=30, token_budget=90),
]


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_matches_token_by_token_reference(seed: int) -> None:
    """simulate_order (prefix minima + binary search) gives the same outcome as walking
    every token through a GroupWindow, for random pools, orders, budgets and thresholds."""
    scripts = make_scripts(seed, 30)
    pool = pool_of(scripts)
    prepared = pool.prepared(WINDOW)
    rng = np.random.default_rng(seed)
    for params in PARAMS:
        order = rng.permutation(len(pool)).tolist()
        fast = simulate_order(prepared, order, params)
        slow = simulate_order_reference(prepared, pool.traces, order, params)
        assert fast == slow


@pytest.mark.parametrize("seed", range(6))
async def test_replay_agrees_exactly_with_live_online_run(seed: int, tmp_path: Path) -> None:
    """With concurrency 1 and the same trace order, the live online controller and the
    replay of the offline-recorded traces pick the same answer and spend the same tokens."""
    scripts = make_scripts(100 + seed, 30)
    await write_offline(scripts, tmp_path / "t.jsonl", "p")
    pool = load_pools([tmp_path / "t.jsonl"])["p"]
    assert [t.answer for t in pool.traces] == [s.answer for s in scripts]
    for params in PARAMS:
        config = live_config(params)
        live = await DeepConf(FakeBackend(dict(enumerate(scripts))), config).solve("q")
        answer, tokens = simulate_online(pool, params, rng=None)
        outcome = simulate_order(pool.prepared(WINDOW), list(range(len(pool))), params)
        assert (answer, tokens) == (live.answer, live.tokens.total), params
        assert outcome.threshold == live.threshold
        assert outcome.stop_reason == live.stop_reason
        assert outcome.traces == len(live.traces)


async def test_replay_expectation_matches_repeated_live_runs() -> None:
    """Replay's expected accuracy and tokens over random orders lie within sampling error
    of the means of repeated live runs on random orders of the same pool."""
    scripts = make_scripts(7, 40)
    pool = pool_of(scripts)
    params = OnlineParams(warmup=4, eta=90, tau=0.9, budget=16)
    config = live_config(params)
    rng = np.random.default_rng(0)
    live_correct, live_tokens = [], []
    for _ in range(60):
        order = rng.permutation(len(scripts))
        fake = FakeBackend(default=lambda i, order=order: scripts[int(order[i])])
        result = await DeepConf(fake, config).solve("q")
        live_correct.append(result.answer == "7")
        live_tokens.append(result.tokens.total)
    score = expected_online(pool, "7", params, "high", 2000, np.random.default_rng(1), _Grades())
    se_acc = max(np.std(live_correct) / math.sqrt(60), 0.02)
    se_tok = np.std(live_tokens) / math.sqrt(60)
    assert abs(np.mean(live_correct) - score.correct) < 4 * se_acc
    assert abs(np.mean(live_tokens) - score.tokens) < 4 * se_tok + 1


def test_expected_offline_pass_at_1_and_full_pool_vote() -> None:
    """pass@1 is the fraction of pool traces that are right; with a budget covering the pool
    every method is the one vote over the whole pool, costing every trace's tokens."""
    scripts = make_scripts(3, 20)
    pool = pool_of(scripts)
    scores = {
        s.method: s
        for s in expected_offline(
            pool, "7", ["majority", "lowest@10"], 64, 8, np.random.default_rng(0), _Grades()
        )
    }
    right = [s.answer == "7" for s in scripts]
    assert scores["pass@1"].correct == pytest.approx(np.mean(right))
    prepared = pool.prepared(WINDOW)
    vote = method_vote("lowest@10", prepared.answers, prepared.metrics, prepared.keys)
    assert scores["lowest@10"].correct == float(vote.leader == "7")
    assert scores["majority@64"].tokens == sum(len(s.conf) for s in scripts)


def test_expected_offline_subsets_are_budget_sized() -> None:
    """Working sets smaller than the pool cost budget traces' tokens on average."""
    pool = pool_of([Script(conf=[15.0] * 10, answer="7") for _ in range(30)])
    scores = expected_offline(pool, "7", ["majority"], 8, 5, np.random.default_rng(0), _Grades())
    assert scores[1].method == "majority@8"
    assert scores[1].tokens == 80 and scores[1].correct == 1.0


async def test_load_pools_keeps_only_traces_that_ran_to_the_end(tmp_path: Path) -> None:
    """Pruned traces of an online file are skipped and counted; mixing windows is an error."""
    warm = [Script(conf=[18.0] * 12, answer=str(i)) for i in range(4)]  # beta stays 1/4
    dips = [Script(conf=[18.0] * 4 + [5.0] * 12, answer="7") for _ in range(3)]
    scripts = warm + dips + [Script(conf=[18.0] * 12, answer="9")]
    path = tmp_path / "online.jsonl"
    config = DeepConfConfig(
        mode="online",
        variant="high",
        budget=8,
        warmup=4,
        tau=1.0,
        concurrency=1,
        confidence=ConfidenceConfig(window=WINDOW),
    )
    result = await DeepConf(FakeBackend(dict(enumerate(scripts))), config, trace_path=path).solve(
        "q", problem_id="p"
    )
    pool = load_pools([path])["p"]
    pruned = sum(1 for t in result.traces if t.status == "pruned")
    assert pool.skipped == pruned == 3
    assert len(pool) == len(result.traces) - pruned
    other = tmp_path / "other.jsonl"
    line = json.loads(path.read_text().splitlines()[0])
    line["window"] = WINDOW * 2
    other.write_text(json.dumps(line) + "\n")
    with pytest.raises(ConfigError, match="mixes traces"):
        load_pools([path, other])


def test_replay_scores_need_every_gold_answer_and_label_sweeps() -> None:
    """A pool without a gold answer is an error; sweeps label each combination."""
    pools = {"a": pool_of(make_scripts(1, 10), "a"), "b": pool_of(make_scripts(2, 10), "b")}
    grid = online_grid([10, 90], [0.9, 0.95], [4], budget=10)
    assert [label for label, _ in grid] == [
        "deepconf-low (τ=0.9)",
        "deepconf-low (τ=0.95)",
        "deepconf-high (τ=0.9)",
        "deepconf-high (τ=0.95)",
    ]
    with pytest.raises(ConfigError, match="no gold answer"):
        replay_scores(pools, {"a": "7"}, online=grid, methods=["majority"], budget=10)
    scores = replay_scores(
        pools, {"a": "7", "b": "7"}, online=grid, methods=["majority"], budget=10, repeats=4
    )
    assert {s.method for s in scores} == {"pass@1", "majority@10", *(g for g, _ in grid)}
    assert len(scores) == 2 * (2 + len(grid))


def test_pools_without_finished_traces_are_dropped_with_a_warning(tmp_path: Path) -> None:
    """A problem whose traces were all pruned cannot be replayed; the user is told."""
    line = {
        "problem_id": "x",
        "window": 8,
        "index": 0,
        "phase": "online",
        "status": "pruned",
        "tokens": 3,
        "token_confs": [1.0, 2.0, 3.0],
    }
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with warnings.catch_warnings(record=True), pytest.raises(ConfigError, match="offline"):
        warnings.simplefilter("always")
        load_pools([path])


async def test_pools_are_in_trace_index_order_whatever_the_finish_order(tmp_path: Path) -> None:
    """Traces written as they end (later ones first here) load in launch order, the order
    a live run with the same seeds meets them in."""
    scripts = [
        Script(conf=[15.0] * (8 - i), answer=str(i), delay=0.002 * (8 - i)) for i in range(8)
    ]
    config = DeepConfConfig(
        mode="offline", budget=8, concurrency=8, confidence=ConfidenceConfig(window=WINDOW)
    )
    path = tmp_path / "t.jsonl"
    await DeepConf(FakeBackend(dict(enumerate(scripts))), config, trace_path=path).solve(
        "q", problem_id="p"
    )
    written = [json.loads(line)["index"] for line in path.read_text().splitlines()]
    assert written != sorted(written)
    assert [t.answer for t in load_pools([path])["p"].traces] == [str(i) for i in range(8)]


async def test_replay_uses_recorded_metrics_where_rounding_would_tie(tmp_path: Path) -> None:
    """Two warm-up traces whose confidences differ below the files' 4 decimals: live, only
    the more confident one passes DeepConf-low's threshold (consensus at once); replay
    agrees because it takes the recorded, unrounded metrics instead of recomputing them."""
    scripts = [
        Script(conf=[15.00004] * 12, answer="1"),
        Script(conf=[15.00001] * 12, answer="2"),
        *[Script(conf=[15.0] * 12, answer="3") for _ in range(4)],
    ]
    await write_offline(scripts, tmp_path / "t.jsonl", "p")
    pool = load_pools([tmp_path / "t.jsonl"])["p"]
    assert pool.traces[0].confs[0] == pool.traces[1].confs[0] == 15.0  # rounded in the file
    params = OnlineParams(warmup=2, eta=10, tau=0.95, budget=6)
    config = live_config(params)
    live = await DeepConf(FakeBackend(dict(enumerate(scripts))), config).solve("q")
    assert (live.answer, live.tokens.total, live.stop_reason) == ("1", 24, "consensus")
    assert simulate_online(pool, params, rng=None) == ("1", 24)
