"""GQA attention: prefill vs naive softmax, decode vs naive softmax and vs the prefill rows."""

import numpy as np

from deepconf.kernels.attention import attention_decode, attention_prefill, attention_reference


def _qkv(seed, b=2, t=7, s=7, h=4, g=2, d=8):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (
        rng.standard_normal((b, t, h, d)).astype(f),
        rng.standard_normal((b, g, s, d)).astype(f),
        rng.standard_normal((b, g, s, d)).astype(f),
    )


def test_prefill_matches_naive_softmax():
    """Causal GQA prefill (query head h reads KV head h // 2) equals the naive loops."""
    q, k, v = _qkv(0)
    pos = np.tile(np.arange(7), (2, 1))
    ref = attention_reference(q, k, v, positions=pos, lengths=np.array([7, 7]))
    np.testing.assert_allclose(attention_prefill(q, k, v), ref, rtol=1e-4, atol=1e-5)


def test_prefill_after_cached_keys():
    """Queries following 5 cached keys see those keys plus the causal part of their block."""
    q, k, v = _qkv(1, t=4, s=9)
    pos = np.tile(np.arange(5, 9), (2, 1))
    ref = attention_reference(q, k, v, positions=pos, lengths=np.array([9, 9]))
    np.testing.assert_allclose(attention_prefill(q, k, v, offset=5), ref, rtol=1e-4, atol=1e-5)


def test_decode_with_per_row_lengths_matches_naive():
    """Rows holding 3 and 9 keys in one padded cache each attend only to their own keys."""
    q, k, v = _qkv(2, t=1, s=12)
    lengths = np.array([3, 9])
    k[0, :, 3:] = 1e3  # garbage past a row's length must not matter
    got = attention_decode(q[:, 0], k, v, lengths)
    ref = attention_reference(q, k, v, positions=(lengths - 1)[:, None], lengths=lengths)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-4, atol=1e-5)


def test_decode_equals_last_prefill_row():
    """Decoding the last token over the cache equals the last row of the causal prefill."""
    q, k, v = _qkv(3, t=6, s=6)
    full = attention_prefill(q, k, v)
    step = attention_decode(q[:, -1], k, v, np.array([6, 6]))
    np.testing.assert_allclose(step, full[:, -1], rtol=1e-5, atol=1e-6)


def test_decode_rows_of_equal_full_length_match_naive():
    """When every row holds all s keys (the unmasked fast path) decode still matches naive."""
    q, k, v = _qkv(4, t=1, s=7)
    lengths = np.array([7, 7])
    got = attention_decode(q[:, 0], k, v, lengths)
    ref = attention_reference(q, k, v, positions=(lengths - 1)[:, None], lengths=lengths)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-4, atol=1e-5)
