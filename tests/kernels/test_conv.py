"""The causal depthwise conv: vectorised vs loops, and the full sequence vs repeated steps."""

import numpy as np

from deepconf.kernels.conv import causal_conv1d, causal_conv1d_reference, conv1d_step


def _data(seed, b=2, t=11, e=6, k=4):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (
        rng.standard_normal((b, t, e)).astype(f),
        rng.standard_normal((e, k)).astype(f),
        rng.standard_normal(e).astype(f),
        rng.standard_normal((b, k - 1, e)).astype(f),
    )


def test_full_conv_matches_loops_with_and_without_state():
    """causal_conv1d equals the per-channel loop, from zeros and from a carried state."""
    x, w, bias, state = _data(0)
    for init in (None, state):
        y, s = causal_conv1d(x, w, bias, init)
        y_ref, s_ref = causal_conv1d_reference(x, w, bias, init)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(s, s_ref.astype(np.float32))


def test_last_tap_multiplies_the_current_token():
    """w[:, k-1] weighs the current input and w[:, 0] the oldest, like PyTorch Conv1d."""
    x = np.zeros((1, 5, 1), np.float32)
    x[0, 2, 0] = 1.0
    w = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    y, _ = causal_conv1d(x, w, None)
    assert y[0, :, 0].tolist() == [0.0, 0.0, 4.0, 3.0, 2.0]


def test_steps_equal_the_full_sequence():
    """conv1d_step token by token gives the full conv's outputs and its final state."""
    x, w, bias, state = _data(1)
    y_full, s_full = causal_conv1d(x, w, bias, state)
    s = state
    for t in range(x.shape[1]):
        y, s = conv1d_step(x[:, t], w, bias, s)
        np.testing.assert_allclose(y, y_full[:, t], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s, s_full)


def test_short_sequence_keeps_zero_padding_in_state():
    """A prompt shorter than k-1 leaves zeros in the oldest state rows."""
    x, w, bias, _ = _data(2, t=2)
    _, s = causal_conv1d(x, w, bias)
    assert np.all(s[:, 0] == 0.0)
    np.testing.assert_array_equal(s[:, 1:], x)


def test_steps_in_place_equal_the_full_sequence():
    """conv1d_step writing its window into the state it reads (out=state) keeps it exact."""
    x, w, bias, state = _data(2)
    y_full, s_full = causal_conv1d(x, w, bias, state)
    s = state.copy()
    for t in range(x.shape[1]):
        y, s_out = conv1d_step(x[:, t], w, bias, s, out=s)
        assert s_out is s
        np.testing.assert_allclose(y, y_full[:, t], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s, s_full)
