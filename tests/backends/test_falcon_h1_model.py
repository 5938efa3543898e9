"""FalconH1Model's cache API against its own full-sequence forward (random numpy weights).

The forward itself is checked against transformers in test_falcon_h1_parity.py; here the
point is that prefill, decode, copy_slot and reset_slot reproduce it exactly, with slots at
different lengths decoding in one batch.
"""

import numpy as np
import pytest

from deepconf.backends.falcon_h1 import FalconH1Config, FalconH1Model
from deepconf.backends.falcon_h1.loader import expected_shapes
from deepconf.errors import BackendError

BASE = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
    mamba_d_ssm=48,
    mamba_n_heads=6,
    mamba_n_groups=2,
    mamba_d_state=8,
    mamba_d_conv=4,
    mamba_chunk_size=8,
    mamba_rms_norm=True,
    mamba_norm_before_gate=False,
    embedding_multiplier=1.5,
    lm_head_multiplier=0.7,
    mlp_multipliers=[0.8, 1.2],
    attention_in_multiplier=0.9,
    attention_out_multiplier=1.1,
    key_multiplier=0.6,
    ssm_in_multiplier=1.25,
    ssm_out_multiplier=0.8,
    ssm_multipliers=[0.5, 0.7, 1.3, 1.5, 0.9],
    rope_theta=1e4,
)


def make_model(seed=0, **overrides):
    """A model with random weights whose logits are O(1), so differences are visible."""
    cfg = FalconH1Config.from_dict({**BASE, **overrides})
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            w = 1.0 + 0.3 * rng.standard_normal(shape)
        elif name.endswith(("A_log", "dt_bias", "mamba.D")):
            w = 0.5 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[-1])
        weights[name] = w.astype(np.float32)
    return FalconH1Model(cfg, weights)


@pytest.fixture(scope="module")
def model():
    return make_model()


def _ids(seed, *shape, vocab=61):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def test_prefill_equals_forward_last_position(model):
    """prefill's logits equal forward's last row, for lengths below, at and above the chunk."""
    for t in (1, 8, 13):
        ids = _ids(t, t)
        cache = model.allocate_cache(2, 32)
        got = model.prefill(ids, cache, 1)
        np.testing.assert_allclose(got, model.forward(ids[None])[0, -1], rtol=1e-5, atol=1e-5)
        assert cache.lengths.tolist() == [0, t]


@pytest.mark.parametrize("order", ["contiguous", "permuted"])
def test_batched_decode_with_different_lengths_equals_forward(model, order):
    """Four slots with prompts of 3, 8, 11 and 1 tokens decode 6 steps together; every step's
    logits equal the full forward of that slot's sequence so far."""
    lengths = [3, 8, 11, 1]
    seqs = [_ids(10 + i, n + 6) for i, n in enumerate(lengths)]
    cache = model.allocate_cache(5, 24)
    slots = np.array([1, 2, 3, 4]) if order == "contiguous" else np.array([4, 0, 2, 1])
    for seq, n, slot in zip(seqs, lengths, slots, strict=True):
        model.prefill(seq[:n], cache, int(slot))
    refs = [model.forward(seq[None])[0] for seq in seqs]
    for step in range(6):
        tokens = np.array([seq[n + step] for seq, n in zip(seqs, lengths, strict=True)])
        out = model.decode(tokens, cache, slots)
        assert out.shape == (4, 61) and out.dtype == np.float32
        for row, (ref, n) in enumerate(zip(refs, lengths, strict=True)):
            np.testing.assert_allclose(out[row], ref[n + step], rtol=1e-4, atol=1e-5)
    assert cache.lengths[slots].tolist() == [n + 6 for n in lengths]


def test_decode_rows_are_independent(model):
    """A slot's logits do not depend on which other slots share its decode batch."""
    cache = model.allocate_cache(3, 16)
    for slot in range(3):
        model.prefill(_ids(20 + slot, 5 + slot), cache, slot)
    alone = model.allocate_cache(1, 16)
    model.prefill(_ids(21, 6), alone, 0)
    together = model.decode(np.array([3, 4, 5]), cache, np.array([0, 1, 2]))
    single = model.decode(np.array([4]), alone, np.array([0]))
    np.testing.assert_allclose(together[1], single[0], rtol=1e-5, atol=1e-6)


def test_prefill_continues_a_slot(model):
    """prefill(a) then prefill(b) on one slot equals prefill(a + b) (cached keys and states)."""
    ids = _ids(30, 17)
    cache = model.allocate_cache(2, 32)
    model.prefill(ids[:6], cache, 0)
    split = model.prefill(ids[6:], cache, 0)
    whole = model.prefill(ids, cache, 1)
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)


def test_copy_slot_forks_and_reset_slot_empties(model):
    """A copied slot continues exactly like its source; a reset slot behaves like a new one."""
    prompt, more = _ids(40, 9), _ids(41, 3)
    cache = model.allocate_cache(3, 24)
    model.prefill(prompt, cache, 0)
    model.copy_slot(cache, 0, 2)
    assert cache.lengths.tolist() == [9, 0, 9]
    a = [model.decode(np.array([t]), cache, np.array([0])) for t in more]
    b = [model.decode(np.array([t]), cache, np.array([2])) for t in more]
    np.testing.assert_array_equal(np.array(a), np.array(b))
    model.reset_slot(cache, 0)
    assert cache.lengths[0] == 0
    fresh = model.allocate_cache(1, 24)
    np.testing.assert_array_equal(model.prefill(more, cache, 0), model.prefill(more, fresh, 0))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(mamba_rms_norm=False),
        dict(mamba_norm_before_gate=True),
        dict(tie_word_embeddings=True),
        dict(attention_bias=True, mlp_bias=True, mamba_proj_bias=True, projectors_bias=True),
        dict(mamba_n_groups=1, num_key_value_heads=4, time_step_limit=[0.01, 0.5]),
    ],
)
def test_variants_decode_like_forward(overrides):
    """Each flag combination keeps prefill + decode equal to the full forward."""
    m = make_model(1, **overrides)
    ids = _ids(50, 12)
    ref = m.forward(ids[None])[0]
    cache = m.allocate_cache(1, 16)
    np.testing.assert_allclose(m.prefill(ids[:9], cache, 0), ref[8], rtol=1e-4, atol=1e-5)
    for t in range(9, 12):
        out = m.decode(ids[t : t + 1], cache, np.array([0]))
        np.testing.assert_allclose(out[0], ref[t], rtol=1e-4, atol=1e-5)


def test_misuse_raises_clear_errors(model):
    """Full slots, duplicate or unknown slots and out-of-vocabulary ids raise BackendError."""
    cache = model.allocate_cache(2, 4)
    with pytest.raises(BackendError, match="max_len"):
        model.prefill(_ids(1, 5), cache, 0)
    model.prefill(_ids(1, 4), cache, 0)
    with pytest.raises(BackendError, match="full"):
        model.decode(np.array([1]), cache, np.array([0]))
    with pytest.raises(BackendError, match="distinct"):
        model.decode(np.array([1, 2]), cache, np.array([1, 1]))
    with pytest.raises(BackendError, match="outside"):
        model.prefill(_ids(1, 2), cache, 5)
    with pytest.raises(BackendError, match="out of range"):
        model.decode(np.array([61]), cache, np.array([1]))
    with pytest.raises(BackendError, match="at least one"):
        model.prefill(np.array([], dtype=np.int64), cache, 1)
