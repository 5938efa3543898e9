"""RMSNorm and the grouped, gated RMSNorm of the Mamba2 mixer (Falcon-H1 flavour).

Not here: the learned weights' layout (the model passes them in). The weight multiplies
directly (no ``1 + w`` offset), and the mean of squares is taken over the last axis.

    y = rms_norm(x, w, eps=1e-5)
    y = gated_rms_norm(y, z, w, groups=2, eps=1e-5, norm_before_gate=False)
"""

from __future__ import annotations

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), with sigmoid(x) = (1 + tanh(x/2)) / 2: no overflow for any x, so no
    errstate guard (entering one costs more than the arithmetic on decode-sized arrays)."""
    out = np.tanh(x * 0.5)
    out += 1.0
    out *= x
    out *= 0.5
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis.

    Arguments: x (..., e), w (e,). Returns (..., e): w * x / sqrt(mean(x**2) + eps).
    """
    return x * _inv_rms(x, eps) * w


def _inv_rms(x: np.ndarray, eps: float) -> np.ndarray:
    """1 / sqrt(mean(x**2) + eps) over the last axis, keepdims (..., 1).

    ``np.add.reduce`` instead of ``np.mean``: the mean's Python wrapper costs more than the
    arithmetic on decode-sized rows (about 5 us a call, 19 calls a decode step).
    """
    ms = np.add.reduce(np.square(x), axis=-1, keepdims=True)  # (..., 1)
    ms *= np.float32(1.0 / x.shape[-1])
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    return np.divide(np.float32(1.0), ms, out=ms)


def rms_norm_reference(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Row-by-row RMSNorm with plain Python sums (the slow reference for tests)."""
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        ms = sum(float(v) * float(v) for v in row) / len(row)
        out[i] = [w[j] * row[j] / np.sqrt(ms + eps) for j in range(len(row))]
    return out.reshape(x.shape)


def gated_rms_norm(
    y: np.ndarray,
    z: np.ndarray,
    w: np.ndarray,
    *,
    groups: int,
    eps: float,
    norm_before_gate: bool,
) -> np.ndarray:
    """The Mamba2 output gate with a grouped RMSNorm.

    Arguments: y (..., e) the SSM output, z (..., e) the gate branch, w (e,), ``groups``
    dividing e. The norm is taken separately over each of the ``groups`` contiguous blocks of
    e/groups channels.
    ``norm_before_gate=False`` (real checkpoints): norm(y * silu(z)) * w.
    ``norm_before_gate=True``: norm(y) * w * silu(z).
    Returns (..., e).
    """
    if not norm_before_gate:
        y = y * silu(z)
    shape = y.shape
    yg = y.reshape(*shape[:-1], groups, shape[-1] // groups)  # (..., g, e/g)
    out = (yg * _inv_rms(yg, eps)).reshape(shape) * w  # (..., e)
    if norm_before_gate:
        out = out * silu(z)
    return out


def gated_rms_norm_reference(
    y: np.ndarray,
    z: np.ndarray,
    w: np.ndarray,
    *,
    groups: int,
    eps: float,
    norm_before_gate: bool,
) -> np.ndarray:
    """Loop over rows and groups; the slow reference of ``gated_rms_norm``."""
    e = y.shape[-1]
    size = e // groups
    fy, fz = y.reshape(-1, e), z.reshape(-1, e)
    out = np.empty_like(fy)
    for i in range(fy.shape[0]):
        gate = [float(v) / (1.0 + np.exp(-float(v))) for v in fz[i]]
        row = [float(fy[i, j]) * (1.0 if norm_before_gate else gate[j]) for j in range(e)]
        for g in range(groups):
            block = row[g * size : (g + 1) * size]
            scale = 1.0 / np.sqrt(sum(v * v for v in block) / size + eps)
            for j in range(g * size, (g + 1) * size):
                val = row[j] * scale * float(w[j])
                out[i, j] = val * gate[j] if norm_before_gate else val
    return out.reshape(y.shape)
