"""deepconf.confidence against slow references written here as plain Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.confidence import (
    LOGPROB_FLOOR,
    GroupWindow,
    TraceMetrics,
    group_confidences,
    token_confidence,
    trace_metrics,
)

FAST = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------------------------------------
# Slow references


def ref_token_confidence(rows: list[list[float]]) -> list[float]:
    """C_i = -mean of the entries present (NaN = missing), each clamped up to the floor."""
    out = []
    for row in rows:
        present = [max(x, LOGPROB_FLOOR) for x in row if not math.isnan(x)]
        out.append(-sum(present) / len(present) if present else 0.0)
    return out


def ref_groups(c: list[float], window: int) -> list[float]:
    if not c:
        return [0.0]
    if len(c) < window:
        return [sum(c) / len(c)]
    return [math.fsum(c[i : i + window]) / window for i in range(len(c) - window + 1)]


def ref_metrics(c: list[float], window: int, tail: int, frac: float) -> TraceMetrics:
    groups = ref_groups(c, window)
    n_bottom = max(1, int(len(groups) * frac))
    tail_part = c[-tail:]
    return TraceMetrics(
        mean=sum(c) / len(c) if c else 0.0,
        tail=sum(tail_part) / len(tail_part) if c else 0.0,
        bottom=sum(sorted(groups)[:n_bottom]) / n_bottom,
        lowest=min(groups),
    )


# ---------------------------------------------------------------------------------------------
# Strategies

# Realistic logprobs plus every sentinel a server sends: -9999 (OpenAI / vLLM clamp), -inf,
# and NaN padding where fewer than k entries came back.
logprob = st.one_of(
    st.floats(-30.0, 0.0),
    st.sampled_from([-9999.0, -math.inf, math.nan, -150.0, LOGPROB_FLOOR]),
)


@st.composite
def logprob_rows(draw: st.DrawFn) -> list[list[float]]:
    k = draw(st.integers(1, 21))  # up to k+1 = 21 entries (llama.cpp appends the sampled one)
    n = draw(st.integers(0, 12))
    return [draw(st.lists(logprob, min_size=k, max_size=k)) for _ in range(n)]


# Hypothesis' own lists shrink well but are often near-constant; seeded random streams make
# sure most examples have distinct values, so a min/max or off-by-one slip cannot hide.
confs = st.one_of(
    st.lists(st.floats(0.0, 40.0), min_size=0, max_size=120),
    st.builds(
        lambda seed, n: np.random.default_rng(seed).uniform(0.0, 40.0, n).tolist(),
        st.integers(0, 2**32 - 1),
        st.integers(0, 120),
    ),
)


# ---------------------------------------------------------------------------------------------
# token_confidence


@FAST
@given(logprob_rows())
def test_token_confidence_matches_loop(rows: list[list[float]]) -> None:
    """Vectorised C equals the per-entry loop: NaN skipped, -9999/-inf clamped, empty row 0."""
    k = len(rows[0]) if rows else 3
    got = token_confidence(np.array(rows, dtype=np.float64).reshape(len(rows), k))
    np.testing.assert_allclose(got, ref_token_confidence(rows), rtol=1e-12, atol=1e-12)


@FAST
@given(
    st.lists(st.floats(-30.0, 0.0), min_size=1, max_size=20),
    st.integers(0, 19),
    st.sampled_from([-9999.0, -math.inf, -1e300]),
)
def test_sentinel_moves_c_no_more_than_the_floor(
    row: list[float], pos: int, sentinel: float
) -> None:
    """A sentinel entry counts exactly as LOGPROB_FLOOR: C never exceeds -LOGPROB_FLOOR, and
    it moves C by at most (|floor| - |original|)/k, not by ~9999/k."""
    pos %= len(row)
    with_sentinel = list(row)
    with_sentinel[pos] = sentinel
    with_floor = list(row)
    with_floor[pos] = LOGPROB_FLOOR
    c_sent, c_floor, c_orig = token_confidence(np.array([with_sentinel, with_floor, row]))
    assert c_sent == c_floor
    assert c_sent <= -LOGPROB_FLOOR
    assert c_sent - c_orig <= (-LOGPROB_FLOOR + row[pos]) / len(row) + 1e-9


def test_nan_entries_are_skipped_not_zeroed() -> None:
    """A NaN-padded row averages only what is present: [-1, -3, NaN] -> 2, not 4/3."""
    got = token_confidence(np.array([[-1.0, -3.0, np.nan], [np.nan, np.nan, np.nan]]))
    assert got.tolist() == [2.0, 0.0]


def test_token_confidence_rejects_1d_input() -> None:
    """A flat array is a caller bug (missing the k axis) and is refused, not broadcast."""
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        token_confidence(np.zeros(5))


# ---------------------------------------------------------------------------------------------
# group_confidences and trace_metrics


@FAST
@given(confs, st.integers(1, 40))
def test_group_confidences_match_naive_windows(c: list[float], window: int) -> None:
    """Cumulative-sum windows equal naive window means; n < window is one group (the mean);
    an empty trace is one group of 0."""
    got = group_confidences(np.array(c, dtype=np.float64), window)
    np.testing.assert_allclose(got, ref_groups(c, window), rtol=1e-9, atol=1e-9)


def test_group_confidences_short_and_empty() -> None:
    """The two edge cases stated in the docstring, spelled out."""
    assert group_confidences(np.array([]), 4).tolist() == [0.0]
    assert group_confidences(np.array([1.0, 2.0, 6.0]), 4).tolist() == [3.0]
    assert group_confidences(np.array([1.0, 2.0, 6.0, 3.0]), 4).tolist() == [3.0]
    with pytest.raises(ValueError, match="window"):
        group_confidences(np.array([1.0]), 0)


@FAST
@given(confs, st.integers(1, 40), st.integers(1, 60), st.floats(0.01, 1.0))
def test_trace_metrics_match_reference(c: list[float], window: int, tail: int, frac: float) -> None:
    """mean, tail (last `tail` tokens), bottom (mean of the lowest max(1, int(g*frac)) groups)
    and lowest (min group) all equal their loop definitions."""
    got = trace_metrics(
        np.array(c, dtype=np.float64), window=window, tail=tail, bottom_fraction=frac
    )
    want = ref_metrics(c, window, tail, frac)
    for name in ("mean", "tail", "bottom", "lowest"):
        assert math.isclose(got.get(name), want.get(name), rel_tol=1e-9, abs_tol=1e-9), name


@pytest.mark.parametrize("n_groups", [5, 15, 19, 25, 30, 99])
def test_bottom_truncates_the_group_count(n_groups: int) -> None:
    """bottom averages the int(g * 0.1) lowest groups (at least one), truncating, as the
    reference does: 15 groups -> 1, 19 -> 1, 25 -> 2, 99 -> 9."""
    c = np.arange(n_groups, dtype=np.float64)[::-1].copy()  # window 1: groups = tokens
    m = trace_metrics(c, window=1, tail=n_groups, bottom_fraction=0.1)
    n_bottom = max(1, int(n_groups * 0.1))
    assert m.bottom == (n_bottom - 1) / 2  # mean of 0, 1, ..., n_bottom - 1
    assert m.lowest == 0.0


def test_bottom_uses_ten_percent_of_groups() -> None:
    """With 30 groups the bottom metric averages exactly the 3 lowest."""
    c = np.arange(30, dtype=np.float64)[::-1].copy()  # window 1: groups = tokens
    m = trace_metrics(c, window=1, tail=5, bottom_fraction=0.1)
    assert m == TraceMetrics(mean=14.5, tail=2.0, bottom=1.0, lowest=0.0)
    assert m.to_dict() == {"mean": 14.5, "tail": 2.0, "bottom": 1.0, "lowest": 0.0}


# ---------------------------------------------------------------------------------------------
# GroupWindow (online)


@FAST
@given(confs, st.integers(1, 40))
def test_group_window_push_matches_offline_groups(c: list[float], window: int) -> None:
    """push returns None until the window is full, then exactly the offline group ending at
    that token; `lowest` is the min of all full-window groups so far, None before."""
    w = GroupWindow(window)
    groups = ref_groups(c, window)
    for t, x in enumerate(c):
        g = w.push(x)
        if t + 1 < window:
            assert g is None and w.lowest is None
        else:
            assert g is not None
            assert math.isclose(g, groups[t + 1 - window], rel_tol=1e-9, abs_tol=1e-9)
            low = min(groups[: t + 2 - window])
            assert w.lowest is not None and math.isclose(w.lowest, low, abs_tol=1e-9)
    assert w.count == len(c)


@FAST
@given(confs, st.integers(1, 40), st.lists(st.integers(1, 30), min_size=1, max_size=30))
def test_push_many_returns_min_of_new_groups(c: list[float], window: int, sizes: list[int]) -> None:
    """push_many over any chunking returns the min of the full-window groups that end inside
    the chunk (None if none), and leaves the window as token-by-token pushes would."""
    groups = ref_groups(c, window)
    w = GroupWindow(window)
    start, i = 0, 0
    while start < len(c):
        end = min(len(c), start + sizes[i % len(sizes)])
        got = w.push_many(np.array(c[start:end], dtype=np.float64))
        ends = [t for t in range(start, end) if t + 1 >= window]
        if not ends:
            assert got is None
        else:
            want = min(groups[t + 1 - window] for t in ends)
            assert got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
        start, i = end, i + 1
    if len(c) >= window:
        assert w.lowest is not None and math.isclose(w.lowest, min(groups), abs_tol=1e-9)


def test_group_window_partial_mean() -> None:
    """`mean` is the mean of what the window holds, partial or full; None when empty."""
    w = GroupWindow(3)
    assert w.mean is None
    w.push(1.0)
    w.push(2.0)
    assert w.mean == 1.5
    w.push_many(np.array([3.0, 10.0]))
    assert w.mean == 5.0
    with pytest.raises(ValueError, match="window"):
        GroupWindow(0)


@pytest.mark.parametrize("window", [7, 512])
def test_group_window_drift_over_100k_tokens(window: int) -> None:
    """Over 100k tokens the running sum never drifts: every sampled group is within 1e-9 of an
    exactly rounded (fsum) window mean. Magnitudes mix 1e-3 and 1e2 to provoke cancellation."""
    rng = np.random.default_rng(0)
    c = rng.uniform(0.0, 25.0, 100_000)
    c[::13] = 1e-3
    c[::17] = 100.0
    w = GroupWindow(window)
    worst = 0.0
    for t, x in enumerate(c.tolist()):
        g = w.push(x)
        if g is not None and t % 997 == 0:
            exact = math.fsum(c[t + 1 - window : t + 1].tolist()) / window
            worst = max(worst, abs(g - exact))
    assert worst < 1e-9
    offline = group_confidences(c, window)  # the cumulative-sum path drifts no more
    sample = np.arange(0, offline.shape[0], 4999)
    exact = np.array([math.fsum(c[i : i + window].tolist()) / window for i in sample])
    assert np.max(np.abs(offline[sample] - exact)) < 1e-9


# ---------------------------------------------------------------------------------------------
# Pinned by mutation testing (.ci/mutation): each test below failed on a mutant that every
# test above let through.


def test_float32_logprobs_give_float64_confidences() -> None:
    """The bundled engine emits float32 top logprobs (backends/engine.py): confidences are
    computed and returned in float64 on both paths (full rows and NaN-padded rows), so a
    trace's confidences do not depend on the backend's float width."""
    rng = np.random.default_rng(0)
    lp64 = -rng.exponential(3.0, (50, 20))
    lp64[::7, -1] = np.nan  # a few padded rows: the masked path
    lp32 = lp64.astype(np.float32)
    for rows in (lp32[1:7], lp32):  # full rows only, then with padding
        got = token_confidence(rows)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, token_confidence(rows.astype(np.float64)))


def test_zero_width_rows_have_confidence_zero() -> None:
    """k = 0 (a position with no entries at all, no padding) is 'no evidence': 0.0 per row,
    never 0/0 = NaN."""
    got = token_confidence(np.empty((3, 0)))
    assert got.tolist() == [0.0, 0.0, 0.0]


def test_float32_confidences_group_as_float64() -> None:
    """Group and trace metrics of float32 confidences equal those of the same values in
    float64: a float32 cumulative sum over 100k tokens (ulp ~0.1 at 1e6) would shift every
    window mean by ~1e-2, and a float32 mean by ~1e-6."""
    c32 = np.random.default_rng(1).uniform(0.0, 25.0, 100_000).astype(np.float32)
    c64 = c32.astype(np.float64)
    np.testing.assert_allclose(group_confidences(c32, 7), group_confidences(c64, 7), atol=1e-9)
    assert group_confidences(c32[:5], 7).tolist() == group_confidences(c64[:5], 7).tolist()
    got, want = trace_metrics(c32, 512, 1000), trace_metrics(c64, 512, 1000)
    for name in ("mean", "tail", "bottom", "lowest"):
        assert math.isclose(got.get(name), want.get(name), rel_tol=1e-12), name


def test_trace_metrics_defaults_are_the_papers() -> None:
    """Without arguments trace_metrics uses the paper's settings: window 2048, tail 2048,
    bottom 10% of groups (a trace of 3,000 distinct confidences tells each one apart)."""
    c = np.random.default_rng(2).uniform(0.0, 25.0, 3000)
    assert trace_metrics(c) == trace_metrics(c, window=2048, tail=2048, bottom_fraction=0.1)


@pytest.mark.parametrize("n_groups", [1000, 3000])
def test_bottom_is_the_mean_of_exactly_the_lowest_groups_on_long_traces(n_groups: int) -> None:
    """bottom averages the int(g * 0.1) lowest groups, whatever their order. numpy sorts
    short arrays outright, so a partition that pins one element too few only shows on long
    ones: 40 random traces of 1,000 and 3,000 groups each."""
    n_bottom = n_groups // 10
    for seed in range(40):
        c = np.random.default_rng(seed).uniform(0.0, 40.0, n_groups)
        m = trace_metrics(c, window=1, tail=1, bottom_fraction=0.1)
        assert math.isclose(m.bottom, np.sort(c)[:n_bottom].mean(), rel_tol=1e-12), seed


def test_group_window_repairs_a_cancelled_running_sum_within_a_window() -> None:
    """The running sum is recomputed once per window, so an error never outlives a window:
    one huge value (1e17, where adding 1.0 is lost) leaves the sum 1 short after it leaves
    the window, and from the next multiple of the window on every group is exact again."""
    window = 4
    w = GroupWindow(window)
    w.push(1e17)
    groups = [w.push(1.0) for _ in range(30)]
    # The huge value leaves at count 5; the resum at count 8 repairs the sum.
    assert groups[2 * window - 1 :] == [1.0] * (30 - (2 * window - 1))
