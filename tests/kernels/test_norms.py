"""RMSNorm and the grouped gated RMSNorm against loop references, in both gate orders."""

import numpy as np
import pytest

from deepconf.kernels.norms import (
    gated_rms_norm,
    gated_rms_norm_reference,
    rms_norm,
    rms_norm_reference,
    silu,
)


def test_rms_norm_matches_loops():
    """rms_norm equals w * x / sqrt(mean(x^2) + eps) computed row by row."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 16)).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(rms_norm(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), rtol=1e-5)


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gated_norm_matches_loops(norm_before_gate, groups):
    """Both gate orders and several group counts equal the per-group loop reference."""
    rng = np.random.default_rng(groups)
    y = rng.standard_normal((2, 3, 16)).astype(np.float32)
    z = rng.standard_normal((2, 3, 16)).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    kw = dict(groups=groups, eps=1e-5, norm_before_gate=norm_before_gate)
    np.testing.assert_allclose(
        gated_rms_norm(y, z, w, **kw), gated_rms_norm_reference(y, z, w, **kw), rtol=1e-4, atol=1e-6
    )


def test_gate_order_and_groups_change_the_result():
    """The two gate orders differ, and grouping differs from one whole-vector norm."""
    rng = np.random.default_rng(7)
    y, z = rng.standard_normal((2, 8)), rng.standard_normal((2, 8))
    w = np.ones(8)
    a = gated_rms_norm(y, z, w, groups=2, eps=1e-5, norm_before_gate=False)
    b = gated_rms_norm(y, z, w, groups=2, eps=1e-5, norm_before_gate=True)
    c = gated_rms_norm(y, z, w, groups=1, eps=1e-5, norm_before_gate=False)
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_silu_is_stable_at_extremes():
    """silu(-1000) = 0 and silu(1000) = 1000 without nan."""
    out = silu(np.array([-1000.0, 0.0, 1000.0], np.float32))
    assert out.tolist() == [0.0, 0.0, 1000.0]
