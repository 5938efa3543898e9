"""SwiGLU against per-unit dot products."""

import numpy as np

from deepconf.kernels.mlp import swiglu, swiglu_reference


def test_swiglu_matches_loops_with_and_without_bias():
    """swiglu = down(silu(gate x) * up x) (+ biases) equals the explicit per-unit sum."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    w_gu = rng.standard_normal((8, 10)).astype(np.float32)
    w_d = rng.standard_normal((5, 8)).astype(np.float32)
    b_gu = rng.standard_normal(10).astype(np.float32)
    b_d = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(swiglu(x, w_gu, w_d), swiglu_reference(x, w_gu, w_d), rtol=1e-4)
    np.testing.assert_allclose(
        swiglu(x, w_gu, w_d, b_gu, b_d), swiglu_reference(x, w_gu, w_d, b_gu, b_d), rtol=1e-4
    )
