"""config.json parsing and safetensors loading: formats, dtypes, and errors that name the
file and the field."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from deepconf.backends.falcon_h1 import FalconH1Config, FalconH1Model, load_config
from deepconf.backends.falcon_h1.loader import expected_shapes, load_weights, read_safetensors
from deepconf.errors import ModelLoadError

TINY = dict(
    vocab_size=11,
    hidden_size=8,
    intermediate_size=12,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
    mamba_d_ssm=8,
    mamba_n_heads=2,
    mamba_d_state=4,
    mamba_chunk_size=4,
)


def write_checkpoint(folder, config, drop=(), extra=None, dtype=np.float32):
    """config.json + model.safetensors with random tensors of the shapes the config implies."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    shapes = expected_shapes(FalconH1Config.from_dict(config))
    tensors = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items() if n not in drop}
    tensors |= extra or {}
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def write_raw_safetensors(path, tensors):
    """A safetensors file written by hand: {name: (dtype string, shape, raw bytes)}."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


# ----------------------------------------------------------------------- config.json


def test_hub_style_config_parses_with_derived_fields():
    """A 0.5B-style config: top-level rope_theta, unknown keys, mamba_d_head "auto", null
    mamba_d_ssm, missing head_dim, null KV heads, JSON-encoded inf and a list of eos ids."""
    cfg = FalconH1Config.from_dict(
        {
            **TINY,
            "mamba_d_ssm": None,
            "mamba_expand": 2,
            "mamba_d_head": "auto",
            "head_dim": None,
            "num_key_value_heads": None,
            "rope_theta": 1e11,
            "mamba_use_mlp": True,
            "attn_layer_indices": None,
            "time_step_limit": [0.0, {"__float__": "Infinity"}],
            "eos_token_id": [228, 11],
            "ssm_multipliers": [0.35, 0.25, 0.35, 0.5, 0.35],
        }
    )
    assert (cfg.d_ssm, cfg.mamba_d_head, cfg.head_dim) == (16, 8, 4)
    assert cfg.num_key_value_heads == 2 and cfg.rope_theta == 1e11
    assert cfg.time_step_limit == (0.0, float("inf"))
    assert cfg.eos_token_ids == (228, 11) and cfg.eos_token_id == 228
    assert cfg.ssm_multipliers == (0.35, 0.25, 0.35, 0.5, 0.35)
    assert cfg.conv_dim == 16 + 2 * 4 and cfg.in_proj_dim == 2 * 16 + 2 * 4 + 2


def test_defaults_follow_transformers():
    """Absent fields take transformers' FalconH1Config defaults."""
    cfg = FalconH1Config.from_dict(TINY)
    assert cfg.mlp_multipliers == (1.0, 1.0) and cfg.ssm_multipliers == (1.0,) * 5
    assert cfg.mamba_norm_before_gate is True and cfg.mamba_rms_norm is False
    assert cfg.mamba_conv_bias is True and cfg.mamba_proj_bias is False
    assert cfg.rope_theta == 10000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.mamba_n_groups == 1 and cfg.mamba_d_conv == 4
    assert cfg.eos_token_ids == (2,) and cfg.tie_word_embeddings is False


def test_rope_parameters_win_over_top_level():
    """transformers >= 5 writes rope_parameters; its theta is the one used."""
    cfg = FalconH1Config.from_dict(
        {**TINY, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    )
    assert cfg.rope_theta == 5e5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "config.json: missing field 'hidden_size'"),
        ({"mamba_rms_norm": "yes"}, "field 'mamba_rms_norm' must be true or false"),
        ({"ssm_multipliers": [1, 2]}, "field 'ssm_multipliers' must be a list of 5 numbers"),
        ({"mamba_d_head": 3}, "mamba_d_head (3) must equal mamba_d_ssm (8)"),
        ({"num_key_value_heads": 3}, "must divide num_attention_heads"),
        ({"time_step_limit": [0.0]}, "field 'time_step_limit' must be [min, max]"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type 'yarn'"),
    ],
)
def test_bad_config_names_the_field(change, message):
    """Each malformed or inconsistent field raises ModelLoadError naming it."""
    data = {k: v for k, v in {**TINY, **change}.items() if v is not None}  # None: key absent
    with pytest.raises(ModelLoadError) as err:
        FalconH1Config.from_dict(data)
    assert message in str(err.value)


def test_missing_or_broken_config_file(tmp_path):
    """No config.json, or invalid JSON, is a ModelLoadError naming config.json."""
    with pytest.raises(ModelLoadError, match=r"config\.json: file not found"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: not valid JSON"):
        load_config(tmp_path)


# ----------------------------------------------------------------------- safetensors


def test_reader_matches_the_safetensors_library(tmp_path):
    """Our header-and-bytes reader gives the same arrays as safetensors.numpy (F32, F16)."""
    rng = np.random.default_rng(1)
    arrays = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "c": rng.standard_normal((2, 1, 4)).astype(np.float32),
    }
    save_file(arrays, str(tmp_path / "x.safetensors"))
    ours, ref = (
        read_safetensors(tmp_path / "x.safetensors"),
        load_file(str(tmp_path / "x.safetensors")),
    )
    assert set(ours) == set(ref)
    for name in ref:
        assert ours[name].dtype == np.float32
        np.testing.assert_array_equal(ours[name], ref[name].astype(np.float32))


def test_bf16_is_widened_exactly(tmp_path):
    """bf16 bits shifted into the top half of a float32 give the exact value."""
    values = np.array([1.5, -2.0, 0.15625, 3.0e38, -1.0e-3, 0.0], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")  # truncation, as a bf16 cast of these
    write_raw_safetensors(tmp_path / "m.safetensors", {"w": ("BF16", (2, 3), bf16.tobytes())})
    got = read_safetensors(tmp_path / "m.safetensors")["w"]
    expect = (bf16.astype(np.uint32) << 16).view(np.float32).reshape(2, 3)
    np.testing.assert_array_equal(got, expect)
    assert got[0].tolist() == [1.5, -2.0, 0.15625]


def test_unsupported_dtype_and_truncated_file(tmp_path):
    """An integer tensor or a file cut short raises ModelLoadError naming file and tensor."""
    write_raw_safetensors(tmp_path / "a.safetensors", {"ids": ("I64", (2,), bytes(16))})
    with pytest.raises(ModelLoadError, match=r"a\.safetensors: tensor 'ids' has dtype I64"):
        read_safetensors(tmp_path / "a.safetensors")
    write_raw_safetensors(tmp_path / "b.safetensors", {"w": ("F32", (4,), bytes(8))})
    with pytest.raises(ModelLoadError, match=r"b\.safetensors: tensor 'w' is truncated"):
        read_safetensors(tmp_path / "b.safetensors")


# ----------------------------------------------------------------------- checkpoints


def test_checkpoint_loads_into_the_model(tmp_path):
    """from_pretrained on a numpy-written checkpoint equals a model built from the same arrays."""
    tensors = write_checkpoint(tmp_path, {**TINY, "mamba_rms_norm": True})
    cfg = load_config(tmp_path)
    ids = np.array([[1, 5, 3, 9, 2]])
    np.testing.assert_array_equal(
        FalconH1Model.from_pretrained(tmp_path).forward(ids),
        FalconH1Model(cfg, tensors).forward(ids),
    )


def test_fp16_checkpoint_is_cast_to_float32(tmp_path):
    """F16 tensors load as float32 with the same values."""
    tensors = write_checkpoint(tmp_path, TINY, dtype=np.float16)
    weights = load_weights(tmp_path, load_config(tmp_path))
    name = "model.layers.0.mamba.in_proj.weight"
    assert weights[name].dtype == np.float32
    np.testing.assert_array_equal(weights[name], tensors[name].astype(np.float32))


def test_missing_tensor_is_named(tmp_path):
    """A tensor the config needs but the file lacks is named in the error."""
    write_checkpoint(tmp_path, TINY, drop={"model.layers.0.mamba.in_proj.weight"})
    with pytest.raises(ModelLoadError) as err:
        FalconH1Model.from_pretrained(tmp_path)
    assert "model.safetensors: missing tensor 'model.layers.0.mamba.in_proj.weight'" in str(
        err.value
    )


def test_untied_checkpoint_needs_lm_head(tmp_path):
    """tie_word_embeddings false with no lm_head.weight is an error, true is fine."""
    write_checkpoint(tmp_path / "a", TINY, drop={"lm_head.weight"})
    with pytest.raises(ModelLoadError, match=r"missing tensor 'lm_head\.weight'"):
        FalconH1Model.from_pretrained(tmp_path / "a")
    write_checkpoint(tmp_path / "b", {**TINY, "tie_word_embeddings": True})
    assert FalconH1Model.from_pretrained(tmp_path / "b").forward(np.array([[1, 2]])).shape == (
        1,
        2,
        11,
    )


def test_shape_mismatch_and_stray_norm(tmp_path):
    """A tensor of the wrong shape, or a mamba.norm.weight with mamba_rms_norm false, is an
    error: the config does not describe these weights."""
    write_checkpoint(
        tmp_path / "a", TINY, extra={"model.layers.0.mamba.D": np.zeros(3, np.float32)}
    )
    with pytest.raises(ModelLoadError, match=r"'model.layers.0.mamba.D' has shape \(3,\)"):
        FalconH1Model.from_pretrained(tmp_path / "a")
    norm = {"model.layers.0.mamba.norm.weight": np.ones(8, np.float32)}
    write_checkpoint(tmp_path / "b", TINY, extra=norm)
    with pytest.raises(ModelLoadError, match="mamba_rms_norm false"):
        FalconH1Model.from_pretrained(tmp_path / "b")


def test_missing_weights_file_and_missing_shard(tmp_path):
    """No safetensors at all, or a shard the index lists but the folder lacks, is named."""
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: file not found"):
        FalconH1Model.from_pretrained(tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00001-of-00002\.safetensors: file not found"):
        FalconH1Model.from_pretrained(tmp_path)
