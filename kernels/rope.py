"""Rotary position embedding, the NeoX "rotate-half" variant over the full head size.

Not here: partial rotary, scaling variants (Falcon-H1 uses neither). Angles are computed in
float64 and the cos/sin tables cast to float32: with Falcon-H1's theta = 1e11 most frequencies
are tiny and float32 angles for long positions lose digits.

    cos, sin = rope_tables(positions, head_size=64, theta=1e11)   # (..., d)
    q = apply_rope(q, cos, sin)                                   # q (b, t, h, d), cos (b, t, d)
"""

from __future__ import annotations

import numpy as np


def rope_tables(
    positions: np.ndarray, *, head_size: int, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * inv_freq, each half duplicated.

    Arguments: positions (...,) ints. Returns cos, sin, each (..., d) float32, with
    inv_freq[i] = theta ** (-2i/d) for i < d/2 and emb = concat(p*inv_freq, p*inv_freq).
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (d/2,)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * inv_freq  # (..., d/2)
    emb = np.concatenate([angles, angles], axis=-1)  # (..., d)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = concat(-x2, x1).

    Arguments: x (..., h, d) and cos, sin (..., d) broadcast over the head axis h.
    Returns (..., h, d).
    """
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # (..., h, d)
    return x * cos[..., None, :] + rotated * sin[..., None, :]


def apply_rope_reference(x: np.ndarray, positions: np.ndarray, *, theta: float) -> np.ndarray:
    """Rotate each (i, i + d/2) pair by angle p * theta**(-2i/d), one pair at a time.

    Arguments: x (t, h, d), positions (t,). Returns (t, h, d) float64.
    """
    t_len, heads, d = x.shape
    half = d // 2
    out = np.zeros(x.shape)
    for t in range(t_len):
        for h in range(heads):
            for i in range(half):
                ang = float(positions[t]) * theta ** (-2.0 * i / d)
                a, b = float(x[t, h, i]), float(x[t, h, i + half])
                out[t, h, i] = a * np.cos(ang) - b * np.sin(ang)
                out[t, h, i + half] = b * np.cos(ang) + a * np.sin(ang)
    return out
