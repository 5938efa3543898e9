"""Falcon-H1 ``config.json``: every structural field, flag and muP multiplier the model reads.

Not here: weights (loader.py) and the tokenizer (tokenizer.py). Defaults are those of
transformers' ``FalconH1Config`` when a field is absent; unknown keys (``mamba_use_mlp``,
``attn_layer_indices``, training-only fields) are ignored. A missing required field or a value
of the wrong type raises ``ModelLoadError`` naming the file and the field.

    cfg = load_config("checkpoint/")          # or FalconH1Config.from_dict(json_dict)
    cfg.d_ssm, cfg.conv_dim, cfg.in_proj_dim
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepconf.errors import ModelLoadError

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class FalconH1Config:
    """The fields of a Falcon-H1 config that change the forward pass (see the architecture spec §1).

    Letters used in the kernels: D = hidden_size, H = mamba_n_heads, P = mamba_d_head,
    N = mamba_d_state, G = mamba_n_groups, K = mamba_d_conv.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    attention_bias: bool
    mlp_bias: bool
    d_ssm: int
    mamba_n_heads: int
    mamba_d_head: int
    mamba_d_state: int
    mamba_n_groups: int
    mamba_d_conv: int
    mamba_chunk_size: int
    mamba_conv_bias: bool
    mamba_proj_bias: bool
    projectors_bias: bool
    mamba_rms_norm: bool
    mamba_norm_before_gate: bool
    time_step_limit: tuple[float, float]
    tie_word_embeddings: bool
    embedding_multiplier: float
    lm_head_multiplier: float
    mlp_multipliers: tuple[float, float]
    attention_in_multiplier: float
    attention_out_multiplier: float
    key_multiplier: float
    ssm_in_multiplier: float
    ssm_out_multiplier: float
    ssm_multipliers: tuple[float, float, float, float, float]
    max_position_embeddings: int = 8192
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-sequence id (``eos_token_ids`` holds them all)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def conv_dim(self) -> int:
        """Channels through the short conv: [x (d_ssm) | B (G*N) | C (G*N)]."""
        return self.d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state

    @property
    def in_proj_dim(self) -> int:
        """Rows of in_proj: [z | x | B | C | dt] = 2*d_ssm + 2*G*N + H."""
        return self.d_ssm + self.conv_dim + self.mamba_n_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = CONFIG_FILE) -> FalconH1Config:
        """Parse a config.json dict; ``source`` names the file in error messages."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source}: expected a JSON object at the top level")
        r = _Reader(data, source)
        hidden = r.int("hidden_size")
        heads = r.int("num_attention_heads")
        kv_heads = r.int("num_key_value_heads", None) or heads
        d_ssm = r.int("mamba_d_ssm", 1024, nullable=True)
        if d_ssm is None:
            d_ssm = r.int("mamba_expand", 2) * hidden
        m_heads = r.int("mamba_n_heads", 128)
        d_head = data.get("mamba_d_head", "auto")
        d_head = d_ssm // m_heads if d_head in ("auto", None) else r.int("mamba_d_head")
        groups = r.int("mamba_n_groups", 1)
        cfg = cls(
            vocab_size=r.int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=r.int("intermediate_size"),
            num_hidden_layers=r.int("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=r.int("head_dim", None, nullable=True) or hidden // heads,
            rope_theta=_rope_theta(data, r),
            rms_norm_eps=r.float("rms_norm_eps", 1e-5),
            attention_bias=r.bool("attention_bias", False),
            mlp_bias=r.bool("mlp_bias", False),
            d_ssm=d_ssm,
            mamba_n_heads=m_heads,
            mamba_d_head=d_head,
            mamba_d_state=r.int("mamba_d_state", 256),
            mamba_n_groups=groups,
            mamba_d_conv=r.int("mamba_d_conv", 4),
            mamba_chunk_size=r.int("mamba_chunk_size", 256),
            mamba_conv_bias=r.bool("mamba_conv_bias", True),
            mamba_proj_bias=r.bool("mamba_proj_bias", False),
            projectors_bias=r.bool("projectors_bias", False),
            mamba_rms_norm=r.bool("mamba_rms_norm", False),
            mamba_norm_before_gate=r.bool("mamba_norm_before_gate", True),
            time_step_limit=_time_step_limit(data, source),
            tie_word_embeddings=r.bool("tie_word_embeddings", False),
            embedding_multiplier=r.float("embedding_multiplier", 1.0),
            lm_head_multiplier=r.float("lm_head_multiplier", 1.0),
            mlp_multipliers=r.floats("mlp_multipliers", 2),
            attention_in_multiplier=r.float("attention_in_multiplier", 1.0),
            attention_out_multiplier=r.float("attention_out_multiplier", 1.0),
            key_multiplier=r.float("key_multiplier", 1.0),
            ssm_in_multiplier=r.float("ssm_in_multiplier", 1.0),
            ssm_out_multiplier=r.float("ssm_out_multiplier", 1.0),
            ssm_multipliers=r.floats("ssm_multipliers", 5),
            max_position_embeddings=r.int("max_position_embeddings", 8192),
            bos_token_id=r.int("bos_token_id", 1, nullable=True),
            eos_token_ids=_token_ids(data.get("eos_token_id", 2), source, "eos_token_id"),
            pad_token_id=r.int("pad_token_id", 0, nullable=True),
            raw=dict(data),
        )
        cfg._check(source)
        return cfg

    def _check(self, source: str) -> None:
        """The divisibility rules the shapes rely on."""
        problems = []
        if self.mamba_n_heads * self.mamba_d_head != self.d_ssm:
            problems.append(
                f"mamba_n_heads ({self.mamba_n_heads}) * mamba_d_head ({self.mamba_d_head}) "
                f"must equal mamba_d_ssm ({self.d_ssm})"
            )
        if self.mamba_n_heads % self.mamba_n_groups:
            problems.append(
                f"mamba_n_groups ({self.mamba_n_groups}) must divide mamba_n_heads "
                f"({self.mamba_n_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.raw.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {self.raw['hidden_act']!r} is not supported (only silu)")
        if problems:
            raise ModelLoadError(f"{source}: " + "; ".join(problems))


_MISSING = object()


class _Reader:
    """Typed field access with errors that name the file and the field."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data, self.source = data, source

    def _get(self, name: str, default: Any, nullable: bool) -> Any:
        value = self.data.get(name, default)
        if value is None and not nullable:
            value = default  # null means "use the default", as transformers reads it
        if value is _MISSING:
            raise ModelLoadError(f"{self.source}: missing field '{name}'")
        return value

    def _bad(self, name: str, want: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.source}: field '{name}' must be {want}, got {self.data.get(name)!r}"
        )

    def int(self, name: str, default: Any = _MISSING, nullable: bool = False) -> Any:
        value = self._get(name, default, nullable)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._bad(name, "a non-negative integer")
        return value

    def float(self, name: str, default: Any = _MISSING) -> float:
        value = self._get(name, default, False)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number")
        return float(value)

    def bool(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default, False)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def floats(self, name: str, count: int) -> tuple[float, ...]:
        value = self._get(name, None, True)
        if value is None:
            return (1.0,) * count
        ok = isinstance(value, list) and len(value) == count
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise self._bad(name, f"a list of {count} numbers")
        return tuple(float(v) for v in value)


def _rope_theta(data: dict[str, Any], r: _Reader) -> float:
    """Old configs keep ``rope_theta`` at the top; transformers >= 5 writes rope_parameters."""
    params = data.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        rope_type = params.get("rope_type", "default")
        if rope_type != "default":
            raise ModelLoadError(
                f"{r.source}: rope_parameters.rope_type {rope_type!r} is not supported "
                "(only 'default')"
            )
        theta = params["rope_theta"]
        if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
            raise ModelLoadError(
                f"{r.source}: field 'rope_parameters.rope_theta' must be a positive number"
            )
        return float(theta)
    if data.get("rope_scaling"):
        raise ModelLoadError(f"{r.source}: rope_scaling is not supported; it must be null")
    return r.float("rope_theta", 10000.0)


def _decode_float(value: Any, source: str, name: str) -> float:
    """A JSON number, or transformers 5's {"__float__": "Infinity"} encoding of inf/nan."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: field '{name}' holds a bad float {value!r}") from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelLoadError(f"{source}: field '{name}' must hold numbers, got {value!r}")
    return float(value)


def _time_step_limit(data: dict[str, Any], source: str) -> tuple[float, float]:
    value = data.get("time_step_limit")
    if value is None:
        return (0.0, math.inf)
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ModelLoadError(f"{source}: field 'time_step_limit' must be [min, max], got {value!r}")
    lo, hi = (_decode_float(v, source, "time_step_limit") for v in value)
    return (lo, hi)


def _token_ids(value: Any, source: str, name: str) -> tuple[int, ...]:
    """An id, a list of ids, or null -> a tuple of ids."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ModelLoadError(f"{source}: field '{name}' must be a token id or a list of ids")
    return tuple(values)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; a missing or unreadable file is a ModelLoadError."""
    if not path.is_file():
        raise ModelLoadError(f"{path.name}: file not found in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name}: expected a JSON object at the top level")
    return data


def load_config(path: str | Path) -> FalconH1Config:
    """Read ``config.json`` from a checkpoint folder (or the file itself)."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    return FalconH1Config.from_dict(read_json(file), source=file.name)
