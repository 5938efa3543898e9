"""A Falcon-H1 checkpoint folder -> one GGUF file that llama.cpp (and its OpenAI server) loads.

Why our own writer rather than llama.cpp's convert_hf_to_gguf.py: that script needs torch,
identifies tokenizers by a hash of known releases, and refuses the shipped model's
one-character tokenizer ("cannot find tokenizer merges"). Here the weights come from our numpy
safetensors reader (backends/falcon_h1/loader.py), the file is written with the `gguf`
package (the `llama` extra), and the metadata keys and tensor names are those llama.cpp's
falcon-h1 loader reads (src/models/falcon-h1.cpp, src/llama-arch.cpp in llama-cpp-python
0.3.36's vendored tree).

What llama.cpp needs that a Hugging Face folder does not say:

- **Multipliers folded into weights.** llama.cpp's graph has no muP multipliers, so every one
  is folded exactly as backends/falcon_h1/layers.py folds them (reference/
  falcon-h1-architecture.md): input-side scales (ssm_in, attention_in) into weights only,
  output-side scales (mup segments, key, out, gate, down) into weights and biases.
- **A byte-level BPE vocabulary.** llama.cpp's "gpt2" tokenizer looks tokens up by their
  GPT-2 byte-level strings and refuses a file without merges. A one-character vocabulary
  (WordLevel, like the shipped model's) is rewritten in that form (space -> "Ġ", newline ->
  "Ċ"), with merges that rebuild multi-byte characters and, when none are needed, one merge
  that can never apply. Without it llama.cpp drops spaces and newlines from prompts. A
  byte-level BPE tokenizer keeps its tokens and merges.
- **Where generation ends.** llama.cpp never adds a BOS (our engine does not either) and stops
  at the checkpoint's EOS ids (a second one is written as end-of-turn); llama.cpp also ends at
  tokens it knows by text as end-of-turn ("<|im_end|>", "<|endoftext|>", ...).

Refused, with the reason, rather than exported wrong: an SSM norm applied before the gate, a
dt limit other than (0, inf), in_proj/out_proj biases (llama.cpp's graph has none of them).

    python -m deepconf.eval.gguf_export --out model.gguf [--model-dir DIR] [--outtype f16]
    export_gguf(folder, "model.gguf")
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepconf.backends.bundled import bundled_model_path
from deepconf.backends.falcon_h1.config import FalconH1Config, load_config, read_json
from deepconf.backends.falcon_h1.loader import load_weights
from deepconf.backends.falcon_h1.tokenizer import TOKENIZER_FILE, load_tokenizer
from deepconf.errors import ConfigError, ModelLoadError

ARCH = "falcon-h1"  # llama.cpp's LLM_ARCH_FALCON_H1 name
# gguf.TokenType values (the enum lives in the optional gguf package).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for
    themselves, the rest (space, newline, controls) move to U+0100 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = (b for b in range(256) if b not in table)
    table |= {b: chr(0x100 + n) for n, b in enumerate(shifted)}
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
# A merge of a two-character symbol with itself: symbols start as single characters and only
# merges build longer ones, so in a file whose only merge is this, it never applies. It is
# there because llama.cpp's BPE loader requires a merges list.
INERT_MERGE = "ĠĠ ĠĠ"


def byte_level(text: str) -> str:
    """`text` in GPT-2 byte-level form, e.g. " 12\\n" -> "Ġ12Ċ"."""
    return "".join(BYTE_TO_UNICODE[b] for b in text.encode("utf-8"))


# ------------------------------------------------------------------------------ tokenizer


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer as llama.cpp's "gpt2" model reads it."""

    tokens: list[str]  # (V,) byte-level strings; added tokens keep their text
    types: list[int]  # (V,) gguf TokenType values
    merges: list[str]  # "left right", rank order
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    unk_id: int | None
    chat_template: str | None


def gguf_vocab(folder: Path, cfg: FalconH1Config) -> GgufVocab:
    """Read tokenizer.json (+ tokenizer_config.json) and rewrite it for llama.cpp."""
    data = read_json(folder / TOKENIZER_FILE)
    model = data.get("model") or {}
    kind = model.get("type")
    vocab = model.get("vocab")
    if kind not in ("WordLevel", "BPE") or not isinstance(vocab, dict):
        raise ModelLoadError(
            f"{TOKENIZER_FILE}: model type {kind!r} cannot be exported; only WordLevel with"
            " one character per token and byte-level BPE are"
        )
    if kind == "BPE" and not _is_byte_level(data):
        raise ModelLoadError(
            f"{TOKENIZER_FILE}: a BPE tokenizer without a ByteLevel pre-tokenizer or decoder"
            " cannot be exported (llama.cpp's gpt2 tokenizer needs byte-level tokens)"
        )
    added = {t["id"]: t for t in data.get("added_tokens", []) if isinstance(t, dict)}
    by_id = {i: tok for tok, i in vocab.items()}
    top = max([*by_id, *added], default=-1)
    if top >= cfg.vocab_size:
        raise ModelLoadError(
            f"{TOKENIZER_FILE}: token id {top} is outside config.json's vocab_size"
            f" ({cfg.vocab_size})"
        )
    tokens, types, merges = [], [], []
    for i in range(cfg.vocab_size):
        if i in added:
            # Added tokens keep their text: llama.cpp matches them in raw text, not byte-level.
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif i in by_id and kind == "WordLevel":
            if len(by_id[i]) != 1:
                raise ModelLoadError(
                    f"{TOKENIZER_FILE}: WordLevel token {by_id[i]!r} (id {i}) is not one"
                    " character; only one-character vocabularies can be exported"
                )
            token = byte_level(by_id[i])
            # A multi-byte character becomes several byte symbols: merges rebuild it.
            merges += [f"{token[:j]} {token[j]}" for j in range(1, len(token))]
            tokens.append(token)
            types.append(NORMAL)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:  # config.json's vocabulary is larger than the tokenizer's (padded embeddings)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    if kind == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tok = load_tokenizer(folder)
    unk_text = tok.special_tokens.get("unk_token") or model.get("unk_token")
    return GgufVocab(
        tokens=tokens,
        types=types,
        merges=list(dict.fromkeys(merges)) or [INERT_MERGE],
        bos_id=cfg.bos_token_id,
        eos_ids=tok.eos_token_ids or cfg.eos_token_ids,
        pad_id=cfg.pad_token_id,
        unk_id=tok.token_to_id(unk_text) if unk_text else None,
        chat_template=tok.chat_template,
    )


def _is_byte_level(data: dict[str, Any]) -> bool:
    def types(node: Any) -> list[str]:
        if not isinstance(node, dict):
            return []
        inner = node.get("pretokenizers") or node.get("decoders") or []
        return [node.get("type", ""), *(t for n in inner for t in types(n))]

    return "ByteLevel" in types(data.get("pre_tokenizer")) + types(data.get("decoder"))


# ------------------------------------------------------------------------------ tensors


def check_exportable(cfg: FalconH1Config) -> None:
    """Raise ModelLoadError for what llama.cpp's falcon-h1 graph cannot represent."""
    problems = []
    if cfg.mamba_rms_norm and cfg.mamba_norm_before_gate:
        problems.append("mamba_norm_before_gate is true (llama.cpp gates, then normalises)")
    lo, hi = cfg.time_step_limit
    if lo > 0.0 or math.isfinite(hi):
        problems.append(f"time_step_limit is {[lo, hi]} (llama.cpp does not clamp dt)")
    if cfg.mamba_proj_bias:
        problems.append("mamba_proj_bias is true (llama.cpp's ssm_in has no bias)")
    if cfg.projectors_bias:
        problems.append("projectors_bias is true (llama.cpp's ssm_out has no bias)")
    if problems:
        raise ModelLoadError("config.json: cannot export to GGUF: " + "; ".join(problems))


def gguf_tensors(cfg: FalconH1Config, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp's tensor names -> float32 arrays in PyTorch (out, in) layout, which the
    gguf writer stores as ggml's reversed shape, with every multiplier folded in."""
    out = {
        "token_embd.weight": w["model.embed_tokens.weight"] * cfg.embedding_multiplier,
        # Written even when tied: the two multipliers differ, so the matrices do too.
        "output.weight": w.get("lm_head.weight", w["model.embed_tokens.weight"])
        * cfg.lm_head_multiplier,
        "output_norm.weight": w["model.final_layernorm.weight"],
    }
    d, gn, H = cfg.d_ssm, cfg.mamba_n_groups * cfg.mamba_d_state, cfg.mamba_n_heads
    m_z, m_x, m_b, m_c, m_dt = cfg.ssm_multipliers
    # (in_proj,) HF's mup_vector: z | x | B | C | dt segments of the projection's output.
    mup = np.concatenate(
        [np.full(d, m_z), np.full(d, m_x), np.full(gn, m_b), np.full(gn, m_c), np.full(H, m_dt)]
    )
    a_in, gate_mult, down_mult = cfg.attention_in_multiplier, *cfg.mlp_multipliers
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        layer = {
            "attn_norm.weight": w[p + "input_layernorm.weight"],
            # No ".weight" suffix: llama.cpp asks for "blk.N.ffn_norm" (as convert_hf_to_gguf
            # names Falcon-H1's pre_ff_layernorm), and "blk.N.ssm_a" / "blk.N.ssm_d" below.
            "ffn_norm": w[p + "pre_ff_layernorm.weight"],
            "ssm_in.weight": w[p + "mamba.in_proj.weight"] * (mup * cfg.ssm_in_multiplier)[:, None],
            "ssm_conv1d.weight": w[p + "mamba.conv1d.weight"][:, 0, :],  # (conv_dim, K)
            "ssm_dt.bias": w[p + "mamba.dt_bias"],
            "ssm_a": -np.exp(w[p + "mamba.A_log"])[:, None],  # (H, 1): A itself, not its log
            "ssm_d": w[p + "mamba.D"][:, None],
            "ssm_out.weight": w[p + "mamba.out_proj.weight"] * cfg.ssm_out_multiplier,
            "attn_q.weight": w[p + "self_attn.q_proj.weight"] * a_in,
            "attn_k.weight": w[p + "self_attn.k_proj.weight"] * (a_in * cfg.key_multiplier),
            "attn_v.weight": w[p + "self_attn.v_proj.weight"] * a_in,
            "attn_output.weight": w[p + "self_attn.o_proj.weight"] * cfg.attention_out_multiplier,
            "ffn_gate.weight": w[p + "feed_forward.gate_proj.weight"] * gate_mult,
            "ffn_up.weight": w[p + "feed_forward.up_proj.weight"],
            "ffn_down.weight": w[p + "feed_forward.down_proj.weight"] * down_mult,
        }
        if cfg.mamba_conv_bias:
            layer["ssm_conv1d.bias"] = w[p + "mamba.conv1d.bias"]
        if cfg.mamba_rms_norm:
            # (G, d_ssm / G): the norm is per group.
            layer["ssm_norm.weight"] = w[p + "mamba.norm.weight"].reshape(cfg.mamba_n_groups, -1)
        if cfg.attention_bias:
            # Biases take the output-side scales only: attention_in scales the layer's input.
            layer |= {
                "attn_q.bias": w[p + "self_attn.q_proj.bias"],
                "attn_k.bias": w[p + "self_attn.k_proj.bias"] * cfg.key_multiplier,
                "attn_v.bias": w[p + "self_attn.v_proj.bias"],
                "attn_output.bias": w[p + "self_attn.o_proj.bias"] * cfg.attention_out_multiplier,
            }
        if cfg.mlp_bias:
            layer |= {
                "ffn_gate.bias": w[p + "feed_forward.gate_proj.bias"] * gate_mult,
                "ffn_up.bias": w[p + "feed_forward.up_proj.bias"],
                "ffn_down.bias": w[p + "feed_forward.down_proj.bias"] * down_mult,
            }
        out |= {b + k: v for k, v in layer.items()}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------ file


def export_gguf(model_dir: str | Path | None, out: str | Path, *, outtype: str = "f32") -> Path:
    """Write `model_dir` (default: the shipped model) to the GGUF file `out`.

    outtype "f16" stores the matrices in float16 (half the size; llama.cpp computes in f32
    either way); norms, biases, conv and SSM parameters stay float32, as llama.cpp wants.
    """
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError(
            "GGUF export needs the gguf package: pip install 'deepconf-orchestrator[llama]'"
        ) from exc
    if outtype not in ("f32", "f16"):
        raise ConfigError(f"outtype must be f32 or f16, got {outtype!r}")
    folder = Path(model_dir) if model_dir is not None else bundled_model_path()
    cfg = load_config(folder)
    check_exportable(cfg)
    vocab = gguf_vocab(folder, cfg)
    tensors = gguf_tensors(cfg, load_weights(folder, cfg))

    out = Path(out)
    writer = gguf.GGUFWriter(str(out), ARCH)
    writer.add_name(folder.resolve().name)
    writer.add_file_type(1 if outtype == "f16" else 0)  # LlamaFileType MOSTLY_F16 / ALL_F32
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_ssm_conv_kernel(cfg.mamba_d_conv)
    writer.add_ssm_inner_size(cfg.d_ssm)
    writer.add_ssm_state_size(cfg.mamba_d_state)
    writer.add_ssm_time_step_rank(cfg.mamba_n_heads)  # llama.cpp reads the SSM head count here
    writer.add_ssm_group_count(cfg.mamba_n_groups)
    _add_vocab(writer, vocab)
    for name, array in tensors.items():
        if outtype == "f16" and name.endswith(".weight") and name.split(".")[-2] in _MATMULS:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# The matrices --outtype f16 halves; llama.cpp's norms and SSM kernels read float32.
_MATMULS = {
    "token_embd", "output", "ssm_in", "ssm_out", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_gate", "ffn_up", "ffn_down",
}  # fmt: skip


def _add_vocab(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    # The pre-tokenizer only decides where merges may not cross; with one-character or
    # byte-level tokens, llama.cpp's default (GPT-2's split) tokenizes as the checkpoint does.
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_ids:
        writer.add_eos_token_id(vocab.eos_ids[0])
    if len(vocab.eos_ids) > 1:
        writer.add_eot_token_id(vocab.eos_ids[1])
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m deepconf.eval.gguf_export", description=__doc__)
    p.add_argument("--out", required=True, help="GGUF file to write")
    p.add_argument("--model-dir", default=None, help="Falcon-H1 folder (default: shipped model)")
    p.add_argument("--outtype", choices=("f32", "f16"), default="f32")
    args = p.parse_args(argv)
    path = export_gguf(args.model_dir, args.out, outtype=args.outtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


if __name__ == "__main__":
    main()
