"""Raw top-k log-softmax against a full float64 sort."""

import numpy as np
import pytest

from deepconf.kernels.logprobs import log_softmax, top_k_logprobs, top_k_logprobs_reference


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_top_k_matches_full_sort(k):
    """ids and logprobs equal the k largest of a full log-softmax, sorted descending."""
    logits = np.random.default_rng(k).standard_normal((6, 50)).astype(np.float32) * 4
    ids, lps = top_k_logprobs(logits, k)
    ref_ids, ref_lps = top_k_logprobs_reference(logits, k)
    assert ids.shape == (6, k) and lps.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(lps, ref_lps, atol=1e-5)
    assert np.all(np.diff(lps, axis=1) <= 0)


def test_huge_logits_are_stable():
    """Logits around 1e4 give finite logprobs (max-subtraction), and probabilities sum to 1."""
    logits = np.array([[1e4, 1e4 - 1.0, -1e4, 0.0]], np.float32)
    ids, lps = top_k_logprobs(logits, 4)
    assert np.all(np.isfinite(lps[:, :2]))
    assert ids[0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(np.exp(lps).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(), 1.0, rtol=1e-6)


def test_bad_k_is_rejected():
    """k outside 1..V raises with the vocabulary size in the message."""
    with pytest.raises(ValueError, match=r"1\.\.4"):
        top_k_logprobs(np.zeros((1, 4), np.float32), 5)
