"""SwiGLU feed-forward as Falcon-H1 uses it: down(silu(gate(x)) * up(x)).

Not here: the pre-norm, the residual add and the muP multipliers. The gate and up projections
are one fused (e, 2i) matrix [gate | up], so the batch does one matmul for both; the model folds
``gate_mult`` into the gate columns and ``down_mult`` into ``w_down`` when it loads (exact:
both are scalars on a linear map). Weights use the (in, out) layout.

    y = swiglu(x, w_gate_up, w_down)           # x (b, e) or (b, t, e)
"""

from __future__ import annotations

import numpy as np

from .norms import silu


def swiglu(
    x: np.ndarray,
    w_gate_up: np.ndarray,
    w_down: np.ndarray,
    b_gate_up: np.ndarray | None = None,
    b_down: np.ndarray | None = None,
) -> np.ndarray:
    """SwiGLU MLP.

    Arguments: x (..., e); w_gate_up (e, 2i) = [gate | up]; w_down (i, e); optional biases
    (2i,) and (e,). Returns (..., e).
    """
    gate_up = x @ w_gate_up  # (..., 2i)
    if b_gate_up is not None:
        gate_up += b_gate_up
    i = w_down.shape[0]
    hidden = silu(gate_up[..., :i]) * gate_up[..., i:]  # (..., i)
    out = hidden @ w_down  # (..., e)
    if b_down is not None:
        out += b_down
    return out


def swiglu_reference(
    x: np.ndarray,
    w_gate_up: np.ndarray,
    w_down: np.ndarray,
    b_gate_up: np.ndarray | None = None,
    b_down: np.ndarray | None = None,
) -> np.ndarray:
    """One row and one hidden unit at a time with explicit dot products; the slow reference."""
    i_dim = w_down.shape[0]
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.zeros((flat.shape[0], w_down.shape[1]))
    for r, row in enumerate(flat):
        for j in range(i_dim):
            g = float(np.dot(row, w_gate_up[:, j])) + (0.0 if b_gate_up is None else b_gate_up[j])
            u = float(np.dot(row, w_gate_up[:, i_dim + j]))
            u += 0.0 if b_gate_up is None else b_gate_up[i_dim + j]
            out[r] += (g / (1.0 + np.exp(-g))) * u * w_down[j]
        if b_down is not None:
            out[r] += b_down
    return out.reshape(*x.shape[:-1], w_down.shape[1])
