# Pinned by mutation testing (.ci/mutation): each test failed on a mutant of eval/replay.py
# that tests/eval/test_replay.py let through.
"""Replay: exact scores, messages, tie rules and windows of deepconf.eval.replay."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from deepconf.confidence import trace_metrics
from deepconf.errors import ConfigError
from deepconf.eval.grading import Grade
from deepconf.eval.replay import (
    OnlineOutcome,
    OnlineParams,
    Pool,
    PoolTrace,
    PreparedPool,
    _Grades,
    _Tally,
    expected_offline,
    expected_online,
    load_pools,
    online_grid,
    replay_scores,
    simulate_online,
    simulate_order,
    simulate_order_reference,
    simulate_policy,
)
from deepconf.eval.report import Score
from deepconf.policies import (
    FixedWarmup,
    GroupThresholdPrune,
    MetricSignal,
    Policy,
    RawWeights,
    SelfCertainty,
    TauConsensus,
)
from deepconf.trace import TraceStatus
from deepconf.voting import tolerant_threshold

UNPARSED = "{"  # an answer math-verify cannot read: graded "unparsed"


def trace(confs: list[float], answer: str | None) -> PoolTrace:
    return PoolTrace(answer, np.asarray(confs, dtype=np.float64))


def pool_of(traces: list[PoolTrace], pid: str = "p", **meta: object) -> Pool:
    return Pool(pid, traces, dict(meta))


# --- _Tally / _majority: the empty-vote fallback ----------------------------------------------


def test_tally_leader_ranks_by_weight_then_count_then_first_seen() -> None:
    """_Tally.leader: the heaviest class wins, whatever its count; equal weights go to the
    class with more traces, then to the first seen; the share is weight / total weight."""
    empty = _Tally()
    assert empty.leader() == (None, 0.0)

    heavier = _Tally()
    heavier.add(0, 3.0, "a")
    heavier.add(1, 1.0, "b")
    heavier.add(1, 1.0, "b")
    assert heavier.leader() == ("a", 0.6)

    more = _Tally()
    more.add(0, 2.0, "a")
    more.add(1, 1.0, "b")
    more.add(1, 1.0, "b")
    assert more.leader() == ("b", 0.5)

    for first, second in (("a", "b"), ("b", "a")):
        tie = _Tally()
        tie.add(0, 1.0, first)
        tie.add(1, 1.0, second)
        assert tie.leader() == (first, 0.5)


def test_tally_keeps_first_raw_answer_and_exact_shares() -> None:
    """A class is named by its first raw answer; a share below one total and a zero total
    (share 0.0, no division) come out exactly."""
    named = _Tally()
    named.add(0, 1.0, "x")
    named.add(0, 1.0, "X")
    assert named.leader() == ("x", 1.0)

    small = _Tally()
    small.add(0, 0.5, "a")
    small.add(1, 0.25, "b")
    assert small.leader() == ("a", 0.5 / 0.75)

    weightless = _Tally()
    weightless.add(0, 0.0, "a")
    assert weightless.leader() == ("a", 0.0)


WINDOW = 4


def fallback_pool() -> Pool:
    """Warm-up: A (lowest 20, no answer) sets s = 19 and is the only trace above it, so the
    vote stays empty; B and the short C, D (never full, so never pruned) run to their end
    below s; E is pruned at its first full group."""
    return pool_of(
        [
            trace([20.0] * 8, None),  # A
            trace([10.0] * 8, "b"),  # B
            trace([10.0] * 2, "c"),  # C
            trace([10.0] * 3, "c"),  # D
            trace([10.0] * 8, "e"),  # E
        ],
        window=WINDOW,
    )


def test_empty_vote_falls_back_to_majority_of_finished_traces() -> None:
    """No trace votes: the answer is the plain majority over the traces that ran to their
    end (answerless ones and the pruned one left out)."""
    prepared = fallback_pool().prepared()
    params = OnlineParams(warmup=2, eta=10, tau=0.95, budget=5)
    out = simulate_order(prepared, [0, 1, 2, 3, 4], params)
    assert out == OnlineOutcome("c", 8 + 8 + 2 + 3 + 4, 5, tolerant_threshold(19.0), "budget")
    assert (
        simulate_order_reference(prepared, fallback_pool().traces, [0, 1, 2, 3, 4], params) == out
    )


def test_empty_vote_fallback_tie_goes_to_the_first_finished() -> None:
    """Fallback ties (one trace each) go to the answer that finished first in launch order,
    not in pool index order."""
    prepared = fallback_pool().prepared()
    params = OnlineParams(warmup=2, eta=10, tau=0.95, budget=3)
    assert simulate_order(prepared, [0, 1, 2], params).answer == "b"
    assert simulate_order(prepared, [0, 2, 1], params).answer == "c"
    assert simulate_order(prepared, [1, 0, 2], params).answer == "b"


def test_empty_vote_fallback_without_any_answer_is_none() -> None:
    """Only answerless traces ran to their end: the fallback has no answer."""
    pool = pool_of([trace([20.0] * 8, None), trace([10.0] * 8, None)], window=WINDOW)
    out = simulate_order(pool.prepared(), [0, 1], OnlineParams(warmup=2, eta=10, budget=2))
    assert out == OnlineOutcome(None, 16, 2, tolerant_threshold(19.0), "budget")


# --- expected_offline / expected_online ---------------------------------------------------------


def test_expected_offline_full_pool_scores_exactly() -> None:
    """Budget covering the pool: one draw; pass@1 and the vote's Score rows field by field,
    with the unparsed leader as the example and counted once; the window argument is used
    (the pool records none)."""
    pool = pool_of(
        [trace([15.0] * 2, UNPARSED), trace([15.0] * 3, "7"), trace([15.0] * 4, UNPARSED)],
        window=WINDOW,
    )
    rng = np.random.default_rng(0)
    scores = expected_offline(pool, "7", ["majority"], 5, 4, rng, _Grades())
    assert scores == [
        Score("pass@1", "p", 1 / 3, 3.0, None, "expected", 2),
        Score("majority@5", "p", 0.0, 9.0, UNPARSED, "expected", 1),
    ]
    # the full pool is the draw: nothing is drawn from rng
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)


def test_expected_offline_full_pool_right_answer_is_one() -> None:
    """A full-pool vote that is right scores exactly 1.0 (one draw, not averaged over more)."""
    pool = pool_of([trace([15.0] * 2, "7"), trace([15.0] * 2, "7")], window=WINDOW)
    scores = expected_offline(pool, "7", ["majority"], 2, 3, np.random.default_rng(0), _Grades())
    assert scores == [
        Score("pass@1", "p", 1.0, 2.0, None, "expected", 0),
        Score("majority@2", "p", 1.0, 4.0, None, "expected", 0),
    ]


def test_expected_offline_counts_unparsed_leaders_per_draw() -> None:
    """Working sets smaller than the pool: `repeats` draws, each unparsed leader counted."""
    pool = pool_of([trace([15.0] * 2, UNPARSED) for _ in range(4)], window=WINDOW)
    scores = expected_offline(pool, "7", ["majority"], 2, 3, np.random.default_rng(0), _Grades())
    assert scores == [
        Score("pass@1", "p", 0.0, 2.0, None, "expected", 4),
        Score("majority@2", "p", 0.0, 4.0, UNPARSED, "expected", 3),
    ]


def test_expected_offline_draws_without_replacement() -> None:
    """Each working set is `budget` distinct traces (rng.choice without replacement): the
    tokens are the mean over those draws of the set's tokens."""
    sizes = [1, 2, 4]
    pool = pool_of([trace([15.0] * s, "7") for s in sizes], window=1)
    repeats = 16
    scores = expected_offline(
        pool, "7", ["majority"], 2, repeats, np.random.default_rng(5), _Grades()
    )
    rng = np.random.default_rng(5)
    sets = [rng.choice(3, size=2, replace=False) for _ in range(repeats)]
    assert all(len(set(s.tolist())) == 2 for s in sets)
    spent = sum(sum(sizes[i] for i in s) for s in sets)
    assert scores[1] == Score("majority@2", "p", 1.0, spent / repeats, None, "expected", 0)


def test_expected_offline_names_the_leader_by_the_pool_class() -> None:
    """A working set's leader is named as the pool's class is (its first spelling in the
    pool), not by the set's first spelling."""
    pool = pool_of([trace([1.0], "(("), trace([1.0], "((."), trace([1.0], "((.")], window=1)
    for seed in range(4):
        scores = expected_offline(
            pool, "7", ["majority"], 2, 6, np.random.default_rng(seed), _Grades()
        )
        assert scores[1] == Score("majority@2", "p", 0.0, 2.0, "((", "expected", 6)


def test_expected_online_score_exactly() -> None:
    """Online expectation's Score field by field: every order stops at consensus after the
    two warm-up traces; the unparsed answer is counted per repeat and kept as the example;
    the window argument is used (the pool records none)."""
    pool = pool_of([trace([15.0] * 5, UNPARSED) for _ in range(4)], "q", window=WINDOW)
    params = OnlineParams(warmup=2, eta=10, tau=0.95, budget=4)
    score = expected_online(pool, "7", params, "low", 3, np.random.default_rng(0), _Grades())
    assert score == Score("low", "q", 0.0, 10.0, UNPARSED, "expected", 3)


def test_expected_online_averages_correct_and_tokens() -> None:
    """A right answer in every order scores 1.0; tokens average over the orders."""
    pool = pool_of([trace([15.0] * 5, "7"), trace([15.0] * 7, "7")], window=WINDOW)
    params = OnlineParams(warmup=1, eta=10, tau=0.95, budget=2)
    rng = np.random.default_rng(2)
    score = expected_online(pool, "7", params, "low", 4, rng, _Grades())
    rng2 = np.random.default_rng(2)
    firsts = [int(rng2.permutation(2)[0]) for _ in range(4)]
    tokens = sum((5, 7)[i] for i in firsts) / 4
    assert score == Score("low", "p", 1.0, tokens, None, "expected", 0)


# --- load_pools ------------------------------------------------------------------------------


def record(pid: object = "p", index: int = 0, **fields: object) -> dict[str, object]:
    line: dict[str, object] = {
        "problem_id": pid,
        "window": WINDOW,
        "index": index,
        "phase": "offline",
        "status": "completed",
        "tokens": 2,
        "token_confs": [1.0, 2.0],
        "answer": "7",
    }
    line.update(fields)
    if pid is None:
        del line["problem_id"]
    return line


def write(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_load_pools_trace_without_problem_id_message(tmp_path: Path) -> None:
    """A trace with no problem id: the message names the file and how to record one."""
    path = write(tmp_path / "t.jsonl", [record(None)])
    with pytest.raises(ConfigError) as err:
        load_pools([path])
    assert str(err.value) == (
        f"{path}: a trace has no problem_id; record traces with an eval run or"
        " DeepConf.solve(..., problem_id=...)"
    )


@pytest.mark.parametrize(("key", "a", "b"), [("k", 20, 10), ("formula", "mean", "min")])
def test_load_pools_mixed_settings_message(tmp_path: Path, key: str, a: object, b: object) -> None:
    """Traces of one problem recorded with different k or formula are refused, word for word."""
    first = write(tmp_path / "a.jsonl", [record(**{key: a})])
    second = write(tmp_path / "b.jsonl", [record(index=1, **{key: b})])
    with pytest.raises(ConfigError) as err:
        load_pools([first, second])
    assert str(err.value) == (
        f"{second}: problem 'p' mixes traces with {key}={a!r} and {key}={b!r};"
        " replay them separately"
    )


def test_load_pools_pool_fields(tmp_path: Path) -> None:
    """A loaded pool keeps its problem id, each trace its answer, confidences and status."""
    path = write(tmp_path / "t.jsonl", [record(7, 1, answer="9"), record(7, 0)])
    pool = load_pools([path])["7"]
    assert pool.problem_id == "7"
    assert pool.skipped == 0
    assert [(t.answer, t.confs.tolist(), t.status) for t in pool.traces] == [
        ("7", [1.0, 2.0], TraceStatus.COMPLETED),
        ("9", [1.0, 2.0], TraceStatus.COMPLETED),
    ]


def test_load_pools_warns_of_unfinished_problems_word_for_word(tmp_path: Path) -> None:
    """Problems with no finished trace are dropped with one warning that counts them all
    and names the first five."""
    lines = [record(f"x{i}", status="pruned") for i in range(6)] + [record("ok")]
    path = write(tmp_path / "t.jsonl", lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pools = load_pools([path])
    assert list(pools) == ["ok"]
    assert [str(w.message) for w in caught] == [
        "6 problem(s) have no trace that ran to its end (online-mode files hold pruned traces;"
        " replay needs offline-mode files): x0, x1, x2, x3, x4"
    ]


def test_load_pools_nothing_replayable_message(tmp_path: Path) -> None:
    """Only unfinished traces: the error says what to pass, word for word."""
    path = write(tmp_path / "t.jsonl", [record(status="pruned")])
    with warnings.catch_warnings(), pytest.raises(ConfigError) as err:
        warnings.simplefilter("ignore")
        load_pools([path])
    assert str(err.value) == (
        "no replayable traces found: pass trace files written in offline mode"
    )


# --- OnlineParams, online_grid, variant names ----------------------------------------------------


def test_online_params_bounds_are_inclusive_where_documented() -> None:
    """warmup = budget = 1, eta = 100, a small eta, tau = 1 are all valid."""
    OnlineParams(warmup=1, budget=1)
    OnlineParams(warmup=4, budget=4)
    OnlineParams(eta=100)
    OnlineParams(eta=0.5)
    OnlineParams(tau=1.0)
    OnlineParams(tau=0.01)


@pytest.mark.parametrize(("warmup", "budget"), [(0, 64), (5, 4)])
def test_online_params_warmup_message(warmup: int, budget: int) -> None:
    """warmup below 1 or above the budget is refused, word for word."""
    with pytest.raises(ConfigError) as err:
        OnlineParams(warmup=warmup, budget=budget)
    assert str(err.value) == (f"need 1 <= warmup <= budget, got warmup={warmup}, budget={budget}")


@pytest.mark.parametrize(("eta", "tau"), [(0.0, 0.5), (100.5, 0.5), (10.0, 0.0), (10.0, 1.5)])
def test_online_params_eta_tau_message(eta: float, tau: float) -> None:
    """eta outside (0, 100] or tau outside (0, 1] is refused, word for word."""
    with pytest.raises(ConfigError) as err:
        OnlineParams(eta=eta, tau=tau)
    assert str(err.value) == (
        "eta must be in (0, 100] and tau in (0, 1], got OnlineParams(warmup=16,"
        f" eta={eta}, tau={tau}, budget=64, token_budget=None)"
    )


def test_online_grid_labels_and_params() -> None:
    """One value per parameter: the bare variant label; two warm-ups and two taus: both
    listed (the asked warm-up, even when capped at the budget); token budget passed on;
    other etas are named eta<value>, in the policy's name too."""
    assert online_grid([10], [0.9], [4], budget=10) == [
        ("deepconf-low", OnlineParams(4, 10, 0.9, 10, None))
    ]
    assert online_grid([90], [0.95], [4, 8], budget=6, token_budget=100) == [
        ("deepconf-high (W=4)", OnlineParams(4, 90, 0.95, 6, 100)),
        ("deepconf-high (W=8)", OnlineParams(6, 90, 0.95, 6, 100)),
    ]
    labels = [label for label, _ in online_grid([50], [0.9, 1.0], [2, 3], budget=4)]
    assert labels == [
        "deepconf-eta50 (τ=0.9, W=2)",
        "deepconf-eta50 (τ=0.9, W=3)",
        "deepconf-eta50 (τ=1, W=2)",
        "deepconf-eta50 (τ=1, W=3)",
    ]
    assert OnlineParams(eta=50).policy().name == "deepconf-eta50"
    assert OnlineParams(eta=90).policy().name == "deepconf-high"


# --- Pool.prepared, PreparedPool.build, pool_window -------------------------------------------


def test_pool_window_must_be_recorded_and_positive() -> None:
    """A pool with no usable window (missing, 0, not an int) is refused, word for word;
    window 1 is valid."""
    for meta in ({}, {"window": 0}, {"window": "8"}):
        with pytest.raises(ConfigError) as err:
            pool_of([trace([1.0], "7")], "p1", **meta).prepared()
        assert str(err.value) == "the traces of 'p1' do not record their window; pass --window"
    assert pool_of([trace([1.0], "7")], window=1).prepared().window == 1


def test_answer_only_pool_needs_no_window() -> None:
    """An answer-only pool records no window and gets window 1, with no metrics."""
    pool = pool_of([PoolTrace("7", np.zeros(0), n_tokens=5)], answer_only=True)
    prepared = pool.prepared()
    assert prepared.window == 1
    assert prepared.metrics == [None]
    assert prepared.tokens.tolist() == [5]


def test_prepared_other_window_uses_recorded_tail_and_bottom() -> None:
    """Another window recomputes the metrics with the recorded tail and bottom fraction."""
    confs = [float(c) for c in (9, 3, 8, 1, 7, 6, 2, 9, 5, 4, 8, 3)]
    pool = pool_of([trace(confs, "7")], window=8, tail=3, bottom_fraction=0.5)
    prepared = pool.prepared(2)
    assert prepared.window == 2
    assert prepared.metrics == [trace_metrics(np.asarray(confs), 2, 3, 0.5)]
    assert prepared.metrics != [trace_metrics(np.asarray(confs), 2)]
    assert pool.prepared(2) is prepared


def test_the_recorded_window_passed_explicitly_reuses_the_recorded_metrics() -> None:
    """--window equal to the recorded window is the recorded run: its recorded (unrounded)
    metrics stand, as with no --window; any other window recomputes them."""
    confs = [float(c) for c in (9, 3, 8, 1, 7, 6, 2, 9)]
    recorded = trace_metrics(np.asarray([99.0, 99.0]), 2)  # told apart from a recomputation
    for window in (None, 4):  # a fresh pool each: prepared() caches by window
        pool = pool_of([PoolTrace("7", np.asarray(confs), metrics=recorded)], window=4)
        assert pool.prepared(window).metrics == [recorded]
    assert pool.prepared(2).metrics == [trace_metrics(np.asarray(confs), 2)]


def test_prepared_pool_build_arrays() -> None:
    """build: answer classes in first-seen order (-1 for none), metrics computed (recorded
    ones ignored by default) with the given bottom fraction, None for a trace with no
    confidences, one for a single token; prefix minima only for traces at least a window
    long; int64 arrays even for no traces."""
    recorded = trace_metrics(np.asarray([99.0, 99.0]), 2)
    confs = [float(c) for c in (5, 1, 4, 2, 8, 3)]
    traces = [
        PoolTrace("7", np.asarray(confs), metrics=recorded),
        PoolTrace(None, np.asarray([3.0, 4.0])),
        PoolTrace("7.", np.asarray([6.0])),
        PoolTrace("9", np.zeros(0), n_tokens=4),
    ]
    built = PreparedPool.build(traces, 2, 4, 0.5)
    assert built.classes.tolist() == [0, -1, 0, 1]
    assert built.metrics == [
        trace_metrics(np.asarray(confs), 2, 4, 0.5),
        trace_metrics(np.asarray([3.0, 4.0]), 2, 4, 0.5),
        trace_metrics(np.asarray([6.0]), 2, 4, 0.5),
        None,
    ]
    assert built.metrics[0] != trace_metrics(np.asarray(confs), 2, 4)
    assert [nc.tolist() for nc in built.neg_cummin] == [
        [-3.0, -2.5, -2.5, -2.5, -2.5],
        [-3.5],
        [],
        [],
    ]
    assert built.tokens.tolist() == [6, 2, 1, 4]
    assert built.answers == ["7", None, "7.", "9"]
    empty = PreparedPool.build([], 2, 4, 0.5)
    assert (empty.tokens.dtype, empty.classes.dtype) == (np.int64, np.int64)


def test_prune_at_a_group_equal_to_the_threshold_does_not_prune() -> None:
    """A group equal to the threshold is not below it: the trace is pruned only at the
    first group strictly below, in the fast path and the token-by-token reference (a trace
    exactly at the threshold runs to its end and votes)."""
    prepared = pool_of([trace([2.0, 2.0, 2.0, 2.0, 1.0, 2.0], "7")], window=2).prepared()
    assert prepared.prune_at(0, 2.0) == 5
    assert prepared.prune_at(0, 1.5) is None
    s = tolerant_threshold(15.0)  # the threshold two warm-up traces at 15 give
    traces = [trace([15.0] * 6, "a"), trace([15.0] * 6, "b"), trace([s] * 6, "c")]
    pool = pool_of(traces, window=WINDOW)
    params = OnlineParams(warmup=2, eta=10, tau=1.0, budget=3)
    expected = OnlineOutcome("a", 18, 3, s, "budget")
    assert simulate_order(pool.prepared(), [0, 1, 2], params) == expected
    assert simulate_order_reference(pool.prepared(), pool.traces, [0, 1, 2], params) == expected


# --- simulate_online, replay_scores ------------------------------------------------------------


def test_simulate_online_uses_the_rng_order_and_window() -> None:
    """With an rng the order is rng.permutation of the pool (warm-up 1: the first trace
    decides); the window argument is used (the pool records none)."""
    pool = pool_of([trace([15.0] * (i + 1), str(i)) for i in range(5)], window=WINDOW)
    params = OnlineParams(warmup=1, budget=5)
    for seed in range(3):
        first = int(np.random.default_rng(seed).permutation(5)[0])
        got = simulate_online(pool, params, np.random.default_rng(seed), window=WINDOW)
        assert got == (str(first), first + 1)
    assert {int(np.random.default_rng(s).permutation(5)[0]) for s in range(3)} != {0}


class AllRight:
    def grade(self, predicted: str | None, gold: str) -> Grade:
        return Grade(True, "correct")


def test_replay_scores_defaults_grader_and_window() -> None:
    """replay_scores: 64 repeats and seed 0 by default, one rng shared in pool order, its
    grader and window passed down; a missing gold answer is refused word for word."""
    pools = {
        "a": window_pool("a"),
        "b": pool_of([trace([15.0] * (i + 1), UNPARSED) for i in range(4)], "b", window=8),
    }
    online = [("high", OnlineParams(warmup=2, eta=90, tau=1.0, budget=3))]
    golds = {"a": "7", "b": "7"}
    scores = replay_scores(pools, golds, online=online, methods=["lowest"], budget=2, window=4)
    rng, grades, expected = np.random.default_rng(0), _Grades(), []
    for pool in pools.values():
        expected += expected_offline(pool, "7", ["lowest"], 2, 64, rng, grades, window=4)
        expected.append(expected_online(pool, "7", online[0][1], "high", 64, rng, grades, 4))
    assert scores == expected
    assert [s.unparsed for s in scores[3:]] == [4, 64, 64]
    right = replay_scores(
        pools,
        golds,
        online=online,
        methods=["lowest"],
        budget=2,
        window=4,
        grader=AllRight(),  # type: ignore[arg-type]
    )
    assert [s.correct for s in right] == [1.0] * 6
    with pytest.raises(ConfigError) as err:
        replay_scores(pools, {"b": "7"}, online=online, methods=["majority"], budget=2)
    assert str(err.value) == (
        "no gold answer for 1 problem(s), e.g. 'a': pass the eval results folder or an"
        " --answers file that covers every problem"
    )


def window_pool(pid: str = "p") -> Pool:
    """Recorded with window 8. X's one dip is diluted over 8 tokens (lowest 17.5) but not
    over 4 (lowest 15); Y and Z sit at 16 either way."""
    x = [20.0] * 6 + [0.0] + [20.0] * 6
    return pool_of([trace([16.0] * 12, "7"), trace([16.0] * 12, "5"), trace(x, "3")], pid, window=8)


def test_offline_window_argument_is_used() -> None:
    """expected_offline votes with the metrics of the window asked for: weighted by lowest
    group confidence, X ("3") wins at the recorded window 8 and loses at window 4."""
    pool = window_pool()
    rng = np.random.default_rng(0)
    at_8 = expected_offline(pool, "3", ["lowest"], 3, 1, rng, _Grades())
    at_4 = expected_offline(pool, "3", ["lowest"], 3, 1, rng, _Grades(), window=4)
    assert at_8[1] == Score("lowest", "p", 1.0, 37.0, None, "expected", 0)
    assert at_4[1] == Score("lowest", "p", 0.0, 37.0, None, "expected", 0)


def test_online_window_argument_is_used() -> None:
    """Online at the window asked for: in pool order (warm-up Y, Z: s = 16), X is pruned at
    its first 4-token group with the dip (token 7) but runs to its end and wins at 8."""
    pool = window_pool()
    params = OnlineParams(warmup=2, eta=90, tau=1.0, budget=3)
    assert simulate_online(pool, params, None) == ("3", 37)
    assert simulate_online(pool, params, None, window=4) == ("7", 31)
    rng = np.random.default_rng(1)
    orders = [rng.permutation(3).tolist() for _ in range(6)]
    runs = [simulate_order(pool.prepared(4), order, params) for order in orders]
    score = expected_online(pool, "7", params, "high", 6, np.random.default_rng(1), _Grades(), 4)
    assert score == Score(
        "high",
        "p",
        sum(r.answer == "7" for r in runs) / 6,
        sum(r.tokens for r in runs) / 6,
        None,
        "expected",
        0,
    )
    assert score != expected_online(
        pool, "7", params, "high", 6, np.random.default_rng(1), _Grades()
    )


def test_simulate_policy_scores_self_certainty_with_top_20() -> None:
    """simulate_policy's default k is 20: self-certainty is mean confidence minus ln 20."""
    policy = Policy(
        "sc",
        FixedWarmup(1),
        SelfCertainty(),
        RawWeights(),
        GroupThresholdPrune(10),
        TauConsensus(0.95),
    )
    prepared = pool_of([trace([15.0] * 6, "7")], window=WINDOW).prepared()
    out = simulate_policy(prepared, [0], policy, 1)
    assert out == OnlineOutcome("7", 6, 1, tolerant_threshold(15.0 - math.log(20)), "consensus")


def test_a_pruned_trace_never_votes_whatever_its_signal() -> None:
    """A trace pruned online does not vote, even where the policy's signal (its mean, 18.46)
    passes the threshold (16) its pruning group (15) fell below."""
    policy = Policy(
        "mean",
        FixedWarmup(2),
        MetricSignal("mean"),
        RawWeights(),
        GroupThresholdPrune(90),
        TauConsensus(1.0),
    )
    x = [20.0] * 6 + [0.0] + [20.0] * 6
    traces = [trace([16.0] * 12, "7"), trace([16.0] * 12, "5"), trace(x, "3")]
    prepared = pool_of(traces, window=WINDOW).prepared()
    out = simulate_policy(prepared, [0, 1, 2], policy, 3)
    assert out == OnlineOutcome("7", 12 + 12 + 7, 3, tolerant_threshold(16.0), "budget")


def test_a_pool_without_a_recorded_window_replays_at_a_window_given() -> None:
    """The refusal says "pass --window", so passing one must work: the metrics are then
    recomputed at that window (nothing recorded to reuse); the default still refuses."""
    confs = [float(c) for c in (9, 3, 8, 1, 7, 6)]
    pool = pool_of([trace(confs, "7")], "p1")
    prepared = pool.prepared(2)
    assert prepared.window == 2
    assert prepared.metrics == [trace_metrics(np.asarray(confs), 2)]
    with pytest.raises(ConfigError, match="pass --window"):
        pool.prepared()
