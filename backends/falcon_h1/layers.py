"""One Falcon-H1 decoder layer in numpy: weights folded for inference, sequence and step paths.

Not here: the cache's storage and slot bookkeeping (model.py) and the kernels themselves.
The layer is the "SA_M" hybrid of the architecture spec §2: attention and Mamba2 read the same
normed input in parallel, their outputs are summed into the residual, then a SwiGLU MLP.

Multipliers are folded into the weights once at load time (as llama.cpp does; exact because
each is a scalar or a per-column scale of a linear map), and projections that share an input
are fused so a decode step does few, wide matmuls:

    w_in    (D, in_proj + q + k + v)   [in_proj * ssm_in * mup | q * attn_in |
                                        k * attn_in * key_mult | v * attn_in]
    w_out   (d_ssm + q, D)             [out_proj * ssm_out ; o_proj * attn_out]
    w_gate_up (D, 2I)                  [gate * gate_mult | up],   w_down * down_mult

    lw = LayerWeights.fold(weights, cfg, i)
    h, conv, ssm, k, v = layer_sequence(cfg, lw, h, conv, ssm, k_past, v_past, cos, sin)
    h, conv, ssm = layer_step(cfg, lw, h1, conv, ssm, write_kv, cos1, sin1)   # h1 (b, D)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from deepconf.kernels.attention import attention_decode, attention_prefill
from deepconf.kernels.conv import causal_conv1d, conv1d_step
from deepconf.kernels.mlp import swiglu
from deepconf.kernels.norms import gated_rms_norm, rms_norm, silu
from deepconf.kernels.rope import apply_rope
from deepconf.kernels.ssd import ssd_prefill, ssd_step

from .config import FalconH1Config

# Stores one token's k, v (b, nkv, hd) per row and returns the rows' cached keys, values
# (b, nkv, s, hd) and lengths (b,), the new token included.
WriteKV = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _t(a: np.ndarray) -> np.ndarray:
    """PyTorch Linear (out, in) -> contiguous float32 (in, out)."""
    return np.ascontiguousarray(a.T, dtype=np.float32)


@dataclass
class LayerWeights:
    """The folded, transposed weights of one decoder layer (all float32)."""

    ln_in: np.ndarray  # (D,)
    ln_ff: np.ndarray  # (D,)
    w_in: np.ndarray  # (D, in_proj + q + 2kv)
    b_in: np.ndarray | None  # (in_proj + q + 2kv,)
    conv_w: np.ndarray  # (conv_dim, K)
    conv_b: np.ndarray | None  # (conv_dim,)
    A_log: np.ndarray  # (H,)
    dt_bias: np.ndarray  # (H,)
    D: np.ndarray  # (H,)
    norm_w: np.ndarray | None  # (d_ssm,)
    w_out: np.ndarray  # (d_ssm + q, D)
    b_out: np.ndarray | None  # (D,)
    w_gate_up: np.ndarray  # (D, 2I)
    b_gate_up: np.ndarray | None  # (2I,)
    w_down: np.ndarray  # (I, D)
    b_down: np.ndarray | None  # (D,)

    @classmethod
    def fold(cls, w: dict[str, np.ndarray], cfg: FalconH1Config, i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        d, gn, H = cfg.d_ssm, cfg.mamba_n_groups * cfg.mamba_d_state, cfg.mamba_n_heads
        m_z, m_x, m_b, m_c, m_dt = cfg.ssm_multipliers
        mup = np.concatenate(
            [np.full(d, m_z), np.full(d, m_x), np.full(gn, m_b), np.full(gn, m_c), np.full(H, m_dt)]
        )  # (in_proj,) the per-column scale HF calls mup_vector
        a_in, key_mult = cfg.attention_in_multiplier, cfg.key_multiplier
        names = ["mamba.in_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        n_q, n_k, n_v = (w[p + n + ".weight"].shape[0] for n in names[1:])
        # Scale on the output side (what multiplies a bias too) and on the input side.
        out_scale = np.concatenate([mup, np.ones(n_q), np.full(n_k, key_mult), np.ones(n_v)])
        in_scale = np.concatenate(
            [np.full(mup.size, cfg.ssm_in_multiplier), np.full(n_q + n_k + n_v, a_in)]
        )
        w_in = np.concatenate([w[p + n + ".weight"] for n in names], axis=0)  # (out, D)
        w_in = w_in * (out_scale * in_scale)[:, None]
        b_in = None
        if cfg.mamba_proj_bias or cfg.attention_bias:
            b_in = np.concatenate([_bias(w, p + n, w[p + n + ".weight"].shape[0]) for n in names])
            b_in = (b_in * out_scale).astype(np.float32)
        g_mult, d_mult = cfg.mlp_multipliers
        s_out, a_out = cfg.ssm_out_multiplier, cfg.attention_out_multiplier
        w_out = np.concatenate(
            [w[p + "mamba.out_proj.weight"].T * s_out, w[p + "self_attn.o_proj.weight"].T * a_out]
        )  # (d_ssm + q, D)
        b_out = None
        if cfg.projectors_bias or cfg.attention_bias:
            b_out = _bias(w, p + "mamba.out_proj", w_out.shape[1]) * s_out
            b_out = (b_out + _bias(w, p + "self_attn.o_proj", w_out.shape[1]) * a_out).astype(
                np.float32
            )
        w_gate_up = np.concatenate(
            [w[p + "feed_forward.gate_proj.weight"] * g_mult, w[p + "feed_forward.up_proj.weight"]]
        )
        b_gate_up = b_down = None
        if cfg.mlp_bias:
            b_gate_up = np.concatenate(
                [w[p + "feed_forward.gate_proj.bias"] * g_mult, w[p + "feed_forward.up_proj.bias"]]
            ).astype(np.float32)
            b_down = (w[p + "feed_forward.down_proj.bias"] * d_mult).astype(np.float32)
        return cls(
            ln_in=w[p + "input_layernorm.weight"].astype(np.float32),
            ln_ff=w[p + "pre_ff_layernorm.weight"].astype(np.float32),
            w_in=_t(w_in),
            b_in=b_in,
            conv_w=np.ascontiguousarray(w[p + "mamba.conv1d.weight"][:, 0, :], dtype=np.float32),
            conv_b=_f32(w.get(p + "mamba.conv1d.bias")),
            A_log=w[p + "mamba.A_log"].astype(np.float32),
            dt_bias=w[p + "mamba.dt_bias"].astype(np.float32),
            D=w[p + "mamba.D"].astype(np.float32),
            norm_w=_f32(w.get(p + "mamba.norm.weight")),
            w_out=np.ascontiguousarray(w_out, dtype=np.float32),
            b_out=b_out,
            w_gate_up=_t(w_gate_up),
            b_gate_up=b_gate_up,
            w_down=_t(w[p + "feed_forward.down_proj.weight"] * d_mult),
            b_down=b_down,
        )


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.astype(np.float32)


def _bias(w: dict[str, np.ndarray], name: str, size: int) -> np.ndarray:
    """The bias of a linear layer, or zeros when the checkpoint has none for it."""
    return w.get(name + ".bias", np.zeros(size, dtype=np.float32)).astype(np.float64)


@lru_cache(maxsize=16)
def _split(cfg: FalconH1Config) -> _Split:
    """The config's column ranges, built once (a decode step asks for them in every layer)."""
    return _Split(cfg)


class _Split:
    """Column ranges of the fused input projection."""

    def __init__(self, cfg: FalconH1Config) -> None:
        d, cd = cfg.d_ssm, cfg.conv_dim
        q = cfg.num_attention_heads * cfg.head_dim
        kv = cfg.num_key_value_heads * cfg.head_dim
        self.z = slice(0, d)
        self.xbc = slice(d, d + cd)
        self.dt = slice(d + cd, cfg.in_proj_dim)
        start = cfg.in_proj_dim
        self.q = slice(start, start + q)
        self.k = slice(start + q, start + q + kv)
        self.v = slice(start + q + kv, start + q + 2 * kv)


def _gate(cfg: FalconH1Config, lw: LayerWeights, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The Mamba2 output gate: plain y * silu(z), or the grouped gated RMSNorm (spec §3.5)."""
    if lw.norm_w is None:
        return y * silu(z)
    return gated_rms_norm(
        y,
        z,
        lw.norm_w,
        groups=cfg.mamba_n_groups,
        eps=cfg.rms_norm_eps,
        norm_before_gate=cfg.mamba_norm_before_gate,
    )


def _mlp(cfg: FalconH1Config, lw: LayerWeights, h: np.ndarray) -> np.ndarray:
    x = rms_norm(h, lw.ln_ff, cfg.rms_norm_eps)
    return h + swiglu(x, lw.w_gate_up, lw.w_down, lw.b_gate_up, lw.b_down)


def _project(cfg: FalconH1Config, lw: LayerWeights, h: np.ndarray) -> np.ndarray:
    x = rms_norm(h, lw.ln_in, cfg.rms_norm_eps)
    proj = x @ lw.w_in  # (..., in_proj + q + 2kv)
    if lw.b_in is not None:
        proj += lw.b_in
    return proj


def _mix_out(lw: LayerWeights, y: np.ndarray, o: np.ndarray) -> np.ndarray:
    out = np.concatenate([y, o], axis=-1) @ lw.w_out  # (..., D)
    if lw.b_out is not None:
        out += lw.b_out
    return out


def layer_sequence(
    cfg: FalconH1Config,
    lw: LayerWeights,
    h: np.ndarray,
    conv_state: np.ndarray,
    ssm_state: np.ndarray,
    k_past: np.ndarray,
    v_past: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A block of t new tokens for b rows that all hold the same number of past tokens.

    Arguments: h (b, t, D); conv_state (b, K-1, conv_dim); ssm_state (b, H, N, P);
    k_past, v_past (b, nkv, s0, hd) the cached keys/values (s0 may be 0); cos, sin (t, hd) for
    positions s0 .. s0+t-1. Returns h (b, t, D), the new conv and SSM states, and the new
    keys and values (b, nkv, t, hd) (RoPE applied) for the caller to cache.
    """
    b, t_len, _ = h.shape
    sp = _split(cfg)
    H, P, G, N = cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_n_groups, cfg.mamba_d_state
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = _project(cfg, lw, h)  # (b, t, in_proj + q + 2kv)

    # Mamba2 branch: conv over [x | B | C], SiLU, SSD scan, gate, (out_proj below).
    xbc, conv_state = causal_conv1d(proj[..., sp.xbc], lw.conv_w, lw.conv_b, conv_state)
    xbc = silu(xbc)  # (b, t, conv_dim)
    d, gn = cfg.d_ssm, G * N
    y, ssm_state = ssd_prefill(
        xbc[..., :d].reshape(b, t_len, H, P),
        proj[..., sp.dt],
        xbc[..., d : d + gn].reshape(b, t_len, G, N),
        xbc[..., d + gn :].reshape(b, t_len, G, N),
        A_log=lw.A_log,
        dt_bias=lw.dt_bias,
        D=lw.D,
        chunk_size=cfg.mamba_chunk_size,
        dt_limit=cfg.time_step_limit,
        initial_state=ssm_state,
    )  # (b, t, H, P)
    y = _gate(cfg, lw, y.reshape(b, t_len, d), proj[..., sp.z])  # (b, t, d_ssm)

    # Attention branch on the same normed input.
    q = apply_rope(proj[..., sp.q].reshape(b, t_len, nh, hd), cos, sin)  # (b, t, nh, hd)
    k = apply_rope(proj[..., sp.k].reshape(b, t_len, nkv, hd), cos, sin).transpose(0, 2, 1, 3)
    v = proj[..., sp.v].reshape(b, t_len, nkv, hd).transpose(0, 2, 1, 3)  # (b, nkv, t, hd)
    keys = np.concatenate([k_past, k], axis=2)  # (b, nkv, s0 + t, hd)
    values = np.concatenate([v_past, v], axis=2)
    o = attention_prefill(q, keys, values, offset=k_past.shape[2]).reshape(b, t_len, nh * hd)

    h = h + _mix_out(lw, y, o)
    return _mlp(cfg, lw, h), conv_state, ssm_state, k, v


def layer_step(
    cfg: FalconH1Config,
    lw: LayerWeights,
    h: np.ndarray,
    conv_state: np.ndarray,
    ssm_state: np.ndarray,
    write_kv: WriteKV,
    cos: np.ndarray,
    sin: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One new token for each of b rows (rows may sit at different positions).

    Arguments: h (b, D); conv_state (b, K-1, conv_dim); ssm_state (b, H, N, P);
    ``write_kv(k, v) -> (keys, values, lengths)`` stores this token's k, v (b, nkv, hd) in the
    cache and returns each row's cached keys/values (b, nkv, s, hd) with lengths (b,);
    cos, sin (b, hd) at each row's position. Returns h (b, D) and the new conv and SSM states;
    both are updated in place (``conv_state`` and ``ssm_state`` are returned).
    """
    b = h.shape[0]
    sp = _split(cfg)
    H, P, G, N = cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_n_groups, cfg.mamba_d_state
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = _project(cfg, lw, h)  # (b, in_proj + q + 2kv)

    xbc, conv_state = conv1d_step(proj[:, sp.xbc], lw.conv_w, lw.conv_b, conv_state, out=conv_state)
    xbc = silu(xbc)  # (b, conv_dim)
    d, gn = cfg.d_ssm, G * N
    y, ssm_state = ssd_step(
        ssm_state,
        xbc[:, :d].reshape(b, H, P),
        proj[:, sp.dt],
        xbc[:, d : d + gn].reshape(b, G, N),
        xbc[:, d + gn :].reshape(b, G, N),
        A_log=lw.A_log,
        dt_bias=lw.dt_bias,
        D=lw.D,
        dt_limit=cfg.time_step_limit,
        out=ssm_state,
    )  # (b, H, P)
    y = _gate(cfg, lw, y.reshape(b, d), proj[:, sp.z])  # (b, d_ssm)

    # q and k are adjacent columns of the projection: one RoPE call rotates both heads' sets.
    qk = apply_rope(proj[:, sp.q.start : sp.k.stop].reshape(b, nh + nkv, hd), cos, sin)
    q, k = qk[:, :nh], qk[:, nh:]  # (b, nh, hd), (b, nkv, hd)
    keys, values, lengths = write_kv(k, proj[:, sp.v].reshape(b, nkv, hd))
    o = attention_decode(q, keys, values, lengths).reshape(b, nh * hd)

    h = h + _mix_out(lw, y, o)
    return _mlp(cfg, lw, h), conv_state, ssm_state
