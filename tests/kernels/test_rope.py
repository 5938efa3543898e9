"""Rotate-half RoPE against a per-pair rotation."""

import numpy as np

from deepconf.kernels.rope import apply_rope, apply_rope_reference, rope_tables


def test_rope_matches_pairwise_rotation():
    """apply_rope rotates pair (i, i + d/2) by p * theta^(-2i/d), for any theta."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 8)).astype(np.float32)
    pos = np.array([0, 1, 2, 5, 17, 100, 1000])
    for theta in (1e4, 1e11):
        cos, sin = rope_tables(pos, head_size=8, theta=theta)
        got = apply_rope(x, cos, sin)
        np.testing.assert_allclose(got, apply_rope_reference(x, pos, theta=theta), atol=2e-5)


def test_rope_preserves_norm_and_relative_position():
    """Rotation keeps each head's norm, and q·k depends only on the position difference."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((1, 1, 16)), rng.standard_normal((1, 1, 16))

    def rot(x, p):
        cos, sin = rope_tables(np.array([p]), head_size=16, theta=1e4)
        return apply_rope(x, cos, sin)

    assert np.isclose(np.linalg.norm(rot(q, 9)), np.linalg.norm(q), rtol=1e-5)
    d1 = float(np.sum(rot(q, 10) * rot(k, 3)))
    d2 = float(np.sum(rot(q, 107) * rot(k, 100)))
    assert np.isclose(d1, d2, rtol=1e-4)
