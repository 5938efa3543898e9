"""A tiny random Falcon-H1 checkpoint folder, written without torch, for engine/server tests.

The folder has what a Hugging Face Falcon-H1 checkpoint has: config.json (model_type
falcon_h1), model.safetensors (HF tensor names, written with safetensors.numpy),
tokenizer.json (a byte-level BPE with no merges: one token per byte, so "é" is two tokens and
incremental decoding is exercised) and tokenizer_config.json with a ChatML chat_template.

    folder = write_tiny_model(tmp_path / "tiny")                # ~40k parameters
    folder = write_tiny_model(tmp_path / "t", defaults={"window": 8, "temperature": 0.7})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_ID = 3  # <|im_end|> ends an assistant turn
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONFIG: dict[str, Any] = {
    "model_type": "falcon_h1",
    "architectures": ["FalconH1ForCausalLM"],
    "vocab_size": len(SPECIALS) + 256,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "mamba_d_ssm": 32,
    "mamba_n_heads": 4,
    "mamba_d_head": 8,
    "mamba_d_state": 8,
    "mamba_n_groups": 1,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 16,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "mamba_rms_norm": False,
    "mamba_norm_before_gate": False,
    "projectors_bias": False,
    "tie_word_embeddings": False,
    "embedding_multiplier": 1.0,
    "lm_head_multiplier": 1.0,
    "mlp_multipliers": [1.0, 1.0],
    "attention_in_multiplier": 1.0,
    "attention_out_multiplier": 1.0,
    "key_multiplier": 1.0,
    "ssm_in_multiplier": 1.0,
    "ssm_out_multiplier": 1.0,
    "ssm_multipliers": [1.0, 1.0, 1.0, 1.0, 1.0],
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": EOS_ID,
}


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: ids 0-3 are specials, 4.. the 256 byte symbols."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """HF Falcon-H1 tensor names and shapes, float32, scaled so logits are far from uniform."""
    rng = np.random.default_rng(seed)
    D, V, F = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    nh, nkv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    d, H = config["mamba_d_ssm"], config["mamba_n_heads"]
    G, N, K = config["mamba_n_groups"], config["mamba_d_state"], config["mamba_d_conv"]

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.normal(size=shape) * s).astype(np.float32)

    t = {
        "model.embed_tokens.weight": w(V, D, scale=1.0),
        "lm_head.weight": w(V, D, scale=0.6),
        "model.final_layernorm.weight": np.ones(D, np.float32),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": np.ones(D, np.float32),
            p + "pre_ff_layernorm.weight": np.ones(D, np.float32),
            p + "self_attn.q_proj.weight": w(nh * hd, D),
            p + "self_attn.k_proj.weight": w(nkv * hd, D),
            p + "self_attn.v_proj.weight": w(nkv * hd, D),
            p + "self_attn.o_proj.weight": w(D, nh * hd),
            p + "mamba.in_proj.weight": w(2 * d + 2 * G * N + H, D),
            p + "mamba.conv1d.weight": w(d + 2 * G * N, 1, K, scale=0.5),
            p + "mamba.conv1d.bias": w(d + 2 * G * N, scale=0.1),
            p + "mamba.dt_bias": w(H, scale=0.5),
            p + "mamba.A_log": np.log(rng.uniform(1, 8, size=H)).astype(np.float32),
            p + "mamba.D": np.ones(H, np.float32),
            p + "mamba.out_proj.weight": w(D, d),
            p + "feed_forward.gate_proj.weight": w(F, D),
            p + "feed_forward.up_proj.weight": w(F, D),
            p + "feed_forward.down_proj.weight": w(D, F),
        }
    return t


def write_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    chat_template: bool = True,
    defaults: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> Path:
    """Write the checkpoint folder and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = CONFIG | config_overrides
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(random_weights(config, seed), str(folder / "model.safetensors"))
    build_tokenizer().save(str(folder / "tokenizer.json"))
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "model_max_length": config["max_position_embeddings"],
    }
    if chat_template:
        tok_config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    if defaults is not None:
        (folder / "deepconf.json").write_text(json.dumps(defaults))
    return folder
