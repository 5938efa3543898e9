"""Falcon-H1 safetensors checkpoints -> float32 numpy tensors, checked against the config.

Not here: any folding of multipliers into weights (model.py decides that). Reads a single
``model.safetensors`` or shards listed in ``model.safetensors.index.json``. Tensors are read
straight from the file format (an 8-byte little-endian header length, a JSON header, then raw
bytes) because numpy has no bfloat16: bf16 is widened exactly by shifting its 16 bits into the
top half of a float32. F16, F32 and F64 are cast to float32.

    cfg = load_config(folder)
    weights = load_weights(folder, cfg)      # {"model.embed_tokens.weight": (V, D) float32, ...}
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from deepconf.errors import ModelLoadError

from .config import FalconH1Config, read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as float32 (bf16 widened exactly)."""
    try:
        # A memory map: shards of a multi-GB checkpoint are never read whole into memory.
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: cannot read the file ({exc})") from exc
    if len(raw) < 8:
        raise ModelLoadError(f"{path.name}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
    try:
        header = json.loads(raw[8 : 8 + header_len].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: unreadable safetensors header (not an object)")
    body = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor(path.name, name, info, body)
    return tensors


def _tensor(file: str, name: str, info: dict, body: np.ndarray) -> np.ndarray:
    try:
        dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{file}: bad header entry for tensor '{name}'") from exc
    count = int(np.prod(shape, dtype=np.int64))
    width = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}.get(dtype)
    if width is None:
        raise ModelLoadError(
            f"{file}: tensor '{name}' has dtype {dtype}; only BF16, F16, F32 and F64 load"
        )
    if end - start != count * width or end > len(body):
        raise ModelLoadError(f"{file}: tensor '{name}' is truncated or its offsets are wrong")
    chunk = body[start:end]
    if dtype == "BF16":
        bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return (
        np.frombuffer(chunk, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        .astype(np.float32)
        .reshape(shape)
    )


def read_checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a checkpoint folder and, for each, the file it came from."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{INDEX_FILE}: missing field 'weight_map'")
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise ModelLoadError(
            f"{SINGLE_FILE}: file not found in {folder} (nor {INDEX_FILE}); "
            "point at a Hugging Face-format Falcon-H1 checkpoint folder"
        )
    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for file in files:
        if not (folder / file).is_file():
            raise ModelLoadError(f"{file}: file not found in {folder} (listed in {INDEX_FILE})")
        for name, array in read_safetensors(folder / file).items():
            tensors[name] = array
            origin[name] = file
    return tensors, origin


def expected_shapes(cfg: FalconH1Config) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its PyTorch (out, in) shape (spec §5)."""
    D, V, I = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size  # noqa: E741
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    H, K = cfg.mamba_n_heads, cfg.mamba_d_conv
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (V, D),
        "model.final_layernorm.weight": (D,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": (D,),
            "pre_ff_layernorm.weight": (D,),
            "self_attn.q_proj.weight": (q_dim, D),
            "self_attn.k_proj.weight": (kv_dim, D),
            "self_attn.v_proj.weight": (kv_dim, D),
            "self_attn.o_proj.weight": (D, q_dim),
            "mamba.in_proj.weight": (cfg.in_proj_dim, D),
            "mamba.conv1d.weight": (cfg.conv_dim, 1, K),
            "mamba.dt_bias": (H,),
            "mamba.A_log": (H,),
            "mamba.D": (H,),
            "mamba.out_proj.weight": (D, cfg.d_ssm),
            "feed_forward.gate_proj.weight": (I, D),
            "feed_forward.up_proj.weight": (I, D),
            "feed_forward.down_proj.weight": (D, I),
        }
        if cfg.attention_bias:
            layer |= {
                "self_attn.q_proj.bias": (q_dim,),
                "self_attn.k_proj.bias": (kv_dim,),
                "self_attn.v_proj.bias": (kv_dim,),
                "self_attn.o_proj.bias": (D,),
            }
        if cfg.mlp_bias:
            layer |= {
                "feed_forward.gate_proj.bias": (I,),
                "feed_forward.up_proj.bias": (I,),
                "feed_forward.down_proj.bias": (D,),
            }
        if cfg.mamba_conv_bias:
            layer["mamba.conv1d.bias"] = (cfg.conv_dim,)
        if cfg.mamba_proj_bias:
            layer["mamba.in_proj.bias"] = (cfg.in_proj_dim,)
        if cfg.projectors_bias:
            layer["mamba.out_proj.bias"] = (D,)
        if cfg.mamba_rms_norm:
            layer["mamba.norm.weight"] = (cfg.d_ssm,)
        shapes |= {p + k: v for k, v in layer.items()}
    return shapes


def load_weights(folder: str | Path, cfg: FalconH1Config) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, each checked for presence and shape against ``cfg``.

    ``mamba.norm.weight`` must be present exactly when ``mamba_rms_norm`` is true: a mismatch
    means the config does not describe these weights, and guessing would give wrong logits.
    Tensors the model does not use (e.g. a stored rotary ``inv_freq``) are ignored.
    """
    folder = Path(folder)
    tensors, origin = read_checkpoint(folder)
    where = INDEX_FILE if (folder / INDEX_FILE).is_file() else SINGLE_FILE
    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in tensors:
            raise ModelLoadError(f"{where}: missing tensor '{name}'")
        if tensors[name].shape != shape:
            raise ModelLoadError(
                f"{origin[name]}: tensor '{name}' has shape {tensors[name].shape}, "
                f"config.json implies {shape}"
            )
    if not cfg.mamba_rms_norm:
        stray = [n for n in tensors if n.endswith(".mamba.norm.weight")]
        if stray:
            raise ModelLoadError(
                f"{origin[stray[0]]}: tensor '{stray[0]}' exists but config.json has "
                "mamba_rms_norm false; set mamba_rms_norm to true for this checkpoint"
            )
    return {name: tensors[name] for name in shapes}
