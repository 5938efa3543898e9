"""Our numpy Falcon-H1 against transformers' FalconH1ForCausalLM on tiny random checkpoints.

Every muP multiplier differs from 1, B/C use two groups, head_dim != hidden / heads, and the
sequence (21) is not a multiple of the chunk size (8). The checkpoints travel through
``save_pretrained`` and our loader (single file, sharded, bf16), so loader and model are
checked together. transformers runs its pure-PyTorch fallbacks on the CPU.
"""

import json

import numpy as np
import pytest

from deepconf.backends.falcon_h1 import FalconH1Model
from deepconf.backends.falcon_h1.loader import INDEX_FILE

# The parity extra (torch, transformers): without it this module is skipped.
torch = pytest.importorskip("torch")  # the parity extra: CI installs it
transformers = pytest.importorskip("transformers")
HFConfig = transformers.FalconH1Config
FalconH1ForCausalLM = transformers.FalconH1ForCausalLM

pytestmark = pytest.mark.parity

VOCAB, T = 97, 21
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    mamba_d_ssm=64,
    mamba_n_heads=8,
    mamba_n_groups=2,
    mamba_d_state=12,
    mamba_d_conv=4,
    mamba_chunk_size=8,
    rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    embedding_multiplier=1.3,
    lm_head_multiplier=0.7,
    mlp_multipliers=[0.8, 1.2],
    attention_in_multiplier=0.9,
    attention_out_multiplier=1.1,
    key_multiplier=0.6,
    ssm_in_multiplier=1.25,
    ssm_out_multiplier=0.8,
    ssm_multipliers=[0.5, 0.7, 1.3, 1.5, 0.9],
)
VARIANTS = {
    "plain-gate": dict(mamba_rms_norm=False, tie_word_embeddings=False),
    "gate-then-norm": dict(mamba_rms_norm=True, mamba_norm_before_gate=False),
    "norm-then-gate-tied": dict(
        mamba_rms_norm=True, mamba_norm_before_gate=True, tie_word_embeddings=True
    ),
    "biases-dt-limit-one-group": dict(
        attention_bias=True,
        mlp_bias=True,
        mamba_proj_bias=True,
        projectors_bias=True,
        mamba_n_groups=1,
        time_step_limit=(0.05, 0.8),
        mamba_rms_norm=True,
        mamba_norm_before_gate=False,
    ),
}


def hf_model(seed: int, **overrides) -> FalconH1ForCausalLM:
    """A transformers model whose weights make logits O(1) and whose SSM parameters are not
    at their defaults (A_log = log(1..H), D = 1, dt_bias = 1 would hide indexing bugs)."""
    torch.manual_seed(seed)
    model = FalconH1ForCausalLM(HFConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(("A_log", "dt_bias", "mamba.D")):
                p.copy_(0.5 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model: FalconH1ForCausalLM, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    """Max |difference| within ``rel`` of the largest reference logit."""
    scale = float(np.abs(ref).max())
    assert scale > 0.5, "logits too small for a meaningful comparison"
    np.testing.assert_allclose(got, ref, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (2, T))


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained folder)."""
    hf = hf_model(1, **VARIANTS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, FalconH1Model.from_pretrained(folder)


def test_forward_logits_match_transformers(pair, ids):
    """Full-sequence logits equal transformers' within 1e-4 relative, for each variant."""
    hf, ours = pair
    assert_close(ours.forward(ids), hf_logits(hf, ids))


def test_prefill_then_decode_matches_transformers(pair, ids):
    """Prefill 13 tokens then 8 batched decode steps reproduce transformers' full forward."""
    hf, ours = pair
    ref = hf_logits(hf, ids)
    cache = ours.allocate_cache(3, T)
    for row, slot in enumerate((2, 0)):
        assert_close(ours.prefill(ids[row, :13], cache, slot), ref[row, 12])
    for t in range(13, T):
        out = ours.decode(ids[:, t], cache, np.array([2, 0]))
        assert_close(out, ref[:, t])


def test_sharded_checkpoint_loads(tmp_path, ids):
    """save_pretrained with a small max_shard_size writes several shards and an index; the
    loader reassembles them into the same model."""
    hf = hf_model(2, mamba_rms_norm=True, mamba_norm_before_gate=False)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_close(FalconH1Model.from_pretrained(tmp_path).forward(ids), hf_logits(hf, ids))


def test_bf16_checkpoint_loads_exactly(tmp_path, ids):
    """A bf16 checkpoint loads by widening the 16 bits exactly: our logits match transformers
    running the same bf16 weights in float32."""
    hf = hf_model(3, mamba_rms_norm=False)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert b'"BF16"' in raw[:4096]
    ref_model = FalconH1ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ours = FalconH1Model.from_pretrained(tmp_path)
    embed = ref_model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(ours.embed, (embed * 1.3).astype(np.float32))
    assert_close(ours.forward(ids), hf_logits(ref_model, ids))
