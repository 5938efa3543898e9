"""The chunked SSD scan and the one-token step against the direct recurrence."""

import numpy as np
import pytest

from deepconf.kernels.ssd import (
    discretize,
    segsum,
    segsum_unstable,
    ssd_prefill,
    ssd_reference,
    ssd_step,
)


def _inputs(seed, b=2, t=21, h=4, p=3, g=2, n=5):
    rng = np.random.default_rng(seed)
    f = np.float32
    return dict(
        x=rng.standard_normal((b, t, h, p)).astype(f),
        dt_raw=rng.standard_normal((b, t, h)).astype(f),
        B=rng.standard_normal((b, t, g, n)).astype(f),
        C=rng.standard_normal((b, t, g, n)).astype(f),
        A_log=rng.standard_normal(h).astype(f),
        dt_bias=rng.standard_normal(h).astype(f),
        D=rng.standard_normal(h).astype(f),
        state=rng.standard_normal((b, h, n, p)).astype(f),
    )


def _params(a):
    return dict(A_log=a["A_log"], dt_bias=a["dt_bias"], D=a["D"])


def test_segsum_matches_the_cumsum_difference():
    """segsum equals cumsum[l] - cumsum[s] on and below the diagonal and -inf above it."""
    a = np.random.default_rng(0).standard_normal((3, 7))
    got, want = segsum(a), segsum_unstable(a)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-12)
    assert np.all(np.diagonal(got, axis1=-2, axis2=-1) == 0.0)


@pytest.mark.parametrize("chunk", [1, 4, 8, 32])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_equals_the_recurrence(chunk, with_state):
    """ssd_prefill (chunked, t=21 not a multiple of the chunk) equals the sequential recurrence,
    for the outputs and the final state, from zero or a given initial state, with 2 B/C groups."""
    a = _inputs(1)
    init = a["state"] if with_state else None
    y, s = ssd_prefill(
        a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), chunk_size=chunk, initial_state=init
    )
    y_ref, s_ref = ssd_reference(
        a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), initial_state=init
    )
    assert y.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-5)


def test_repeated_steps_equal_the_recurrence():
    """ssd_step applied token by token reproduces the reference outputs and final state."""
    a = _inputs(2)
    y_ref, s_ref = ssd_reference(
        a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), initial_state=a["state"]
    )
    state = a["state"].copy()
    for t in range(a["x"].shape[1]):
        y, state = ssd_step(
            state, a["x"][:, t], a["dt_raw"][:, t], a["B"][:, t], a["C"][:, t], **_params(a)
        )
        np.testing.assert_allclose(y, y_ref[:, t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state, s_ref, rtol=1e-4, atol=1e-5)


def test_step_in_place_matches_a_fresh_state():
    """Writing the new state into the old one (out=state) gives the same result and keeps
    the default path free of side effects."""
    a = _inputs(3, t=1)
    args = (a["x"][:, 0], a["dt_raw"][:, 0], a["B"][:, 0], a["C"][:, 0])
    before = a["state"].copy()
    y1, s1 = ssd_step(a["state"], *args, **_params(a))
    assert np.array_equal(a["state"], before)
    y2, s2 = ssd_step(a["state"], *args, **_params(a), out=a["state"])
    assert s2 is a["state"]
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1, s2)


def test_time_step_limit_clamps_dt():
    """dt is softplus(dt_raw + bias) clipped to the limit; the recurrence honours the clip."""
    raw = np.array([[-30.0, 0.0, 30.0]], dtype=np.float32)
    dt, A = discretize(raw, np.zeros(3, np.float32), np.zeros(3, np.float32), (0.01, 2.0))
    np.testing.assert_allclose(dt, [[0.01, np.log(2.0), 2.0]], rtol=1e-6)
    assert np.all(A == -1.0)
    a = _inputs(4, t=9)
    a["dt_raw"] *= 10
    limit = (0.05, 0.5)
    y, s = ssd_prefill(
        a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), chunk_size=4, dt_limit=limit
    )
    y_ref, s_ref = ssd_reference(a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), dt_limit=limit)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-5)


def test_long_sequence_stays_finite_and_exact():
    """Strong decay over many chunks (large |A|·dt) neither overflows nor drifts."""
    a = _inputs(5, b=1, t=300, h=2, p=2, g=1, n=3)
    a["A_log"][:] = 3.0
    a["dt_raw"] += 3.0
    y, s = ssd_prefill(a["x"], a["dt_raw"], a["B"], a["C"], **_params(a), chunk_size=64)
    y_ref, s_ref = ssd_reference(a["x"], a["dt_raw"], a["B"], a["C"], **_params(a))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)
