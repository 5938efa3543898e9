"""Causal depthwise 1-D convolution (the Mamba2 short conv), for a whole sequence and one step.

Not here: the SiLU that follows it in the mixer (the caller applies it), and any padding mask.
The state is the last k-1 *inputs* (oldest first), which is all a width-k causal conv needs to
continue a sequence exactly; a fresh sequence starts from zeros.

    y, state = causal_conv1d(x, w, bias, state)          # x (b, t, e)
    y1, state = conv1d_step(x1, w, bias, state)          # x1 (b, e)
"""

from __future__ import annotations

import numpy as np


def causal_conv1d(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, state: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """y[t, e] = bias[e] + sum_j w[e, j] * x[t - (k-1) + j, e]; inputs before t=0 come from state.

    Arguments: x (b, t, e); w (e, k), so w[:, k-1] multiplies the current token; bias (e,) or
    None; state (b, k-1, e) of earlier inputs, oldest first, or None for zeros.
    Returns y (b, t, e) before activation, and the new state (b, k-1, e).
    """
    b, t_len, e = x.shape
    k = w.shape[1]
    if state is None:
        state = np.zeros((b, k - 1, e), dtype=x.dtype)
    padded = np.concatenate([state, x], axis=1)  # (b, k-1+t, e)
    # A loop over the k taps (k is 4) keeps every term a vectorised (b, t, e) multiply-add.
    y = padded[:, 0:t_len] * w[:, 0]  # (b, t, e)
    for j in range(1, k):
        y += padded[:, j : j + t_len] * w[:, j]
    if bias is not None:
        y += bias
    return y, padded[:, t_len:].copy()  # (b, t, e), (b, k-1, e)


def conv1d_step(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    state: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One token of ``causal_conv1d``.

    Arguments: x (b, e) the new input; w (e, k); bias (e,) or None; state (b, k-1, e);
    out (b, k-1, e) or None: where to write the new state (it may be ``state`` itself, so the
    decode loop shifts the cached window in place instead of copying it back; by default a
    new array). Returns y (b, e) before activation and the new state (b, k-1, e) (the window
    shifted by one).
    """
    k = w.shape[1]
    # k (b, e) multiply-adds beat one einsum over a (b, k, e) window by about 3x at b = 64.
    y = x * w[:, k - 1]  # (b, e)
    for j in range(k - 1):
        y += state[:, j] * w[:, j]
    if bias is not None:
        y += bias
    new_state = np.empty_like(state) if out is None else out  # (b, k-1, e)
    new_state[:, :-1] = state[:, 1:]  # numpy copies through a buffer when these overlap
    new_state[:, -1] = x
    return y, new_state


def causal_conv1d_reference(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, state: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Plain loops over rows, positions, channels and taps; the slow reference."""
    b, t_len, e = x.shape
    k = w.shape[1]
    history = np.zeros((b, k - 1, e)) if state is None else np.asarray(state, dtype=np.float64)
    full = np.concatenate([history, x.astype(np.float64)], axis=1)
    y = np.zeros((b, t_len, e))
    for r in range(b):
        for t in range(t_len):
            for c in range(e):
                acc = 0.0 if bias is None else float(bias[c])
                for j in range(k):
                    acc += float(w[c, j]) * full[r, t + j, c]
                y[r, t, c] = acc
    return y, full[:, t_len:]
