"""FalconH1Model: the numpy Falcon-H1 with a slot cache for batched, continuous decoding.

Not here: sampling, stop conditions, scheduling (the engine) and tokenization. The model holds
folded float32 weights (layers.py) and is stateless; every per-sequence state lives in a
``FalconH1Cache`` of ``n_slots`` slots: per layer the conv window, the SSM state and the KV
cache, plus ``lengths`` (tokens held per slot). ``prefill`` runs one slot's prompt with the
chunked scan; ``decode`` advances any set of slots by one token each in one batched step
(gather the slots' states, run every layer as (b, ...) matmuls, scatter back), with each slot
at its own position.

    model = FalconH1Model.from_pretrained("checkpoint/")
    cache = model.allocate_cache(n_slots=64, max_len=1024)
    logits = model.prefill(np.array(prompt_ids), cache, slot=0)      # (V,)
    model.copy_slot(cache, 0, 1)                                      # fork the prompt's state
    logits = model.decode(np.array([t0, t1]), cache, np.array([0, 1]))   # (2, V)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepconf.errors import BackendError
from deepconf.kernels.norms import rms_norm
from deepconf.kernels.rope import rope_tables

from .config import FalconH1Config, load_config
from .layers import LayerWeights, layer_sequence, layer_step
from .loader import load_weights


@dataclass
class FalconH1Cache:
    """Per-slot decoding state for every layer (L layers, S slots)."""

    conv: np.ndarray  # (L, S, K-1, conv_dim) last K-1 pre-conv inputs, oldest first
    ssm: np.ndarray  # (L, S, H, N, P) (the SSD kernels' layout)
    keys: np.ndarray  # (L, S, nkv, max_len, hd) RoPE already applied
    values: np.ndarray  # (L, S, nkv, max_len, hd)
    lengths: np.ndarray  # (S,) int64 tokens held per slot
    cos: np.ndarray  # (max_len, hd) RoPE table for every position a slot can reach
    sin: np.ndarray  # (max_len, hd)

    @property
    def n_slots(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]


class FalconH1Model:
    """A Falcon-H1 causal LM evaluated with the numpy kernels, in float32.

    BLAS threads are left to the caller: this model's matmuls are small, and on a busy 2-core
    machine OpenBLAS's default threads made a batch-16 decode step about 17x slower than one
    thread (the engine caps them process-wide, see backends/bundled.py).
    """

    def __init__(self, config: FalconH1Config, weights: dict[str, np.ndarray]) -> None:
        self.config = config
        cfg = config
        embed = weights["model.embed_tokens.weight"]
        # Embedding and lm_head multipliers are folded into separate copies even when the two
        # matrices are tied: the two scalars differ, and tying is only a storage detail.
        self.embed = (embed * cfg.embedding_multiplier).astype(np.float32)  # (V, D)
        lm = embed if cfg.tie_word_embeddings else weights["lm_head.weight"]
        self.lm_head = np.ascontiguousarray((lm * cfg.lm_head_multiplier).T, dtype=np.float32)
        self.final_norm = weights["model.final_layernorm.weight"].astype(np.float32)  # (D,)
        self.layers = [LayerWeights.fold(weights, cfg, i) for i in range(cfg.num_hidden_layers)]

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FalconH1Model:
        """Load a Hugging Face-format checkpoint folder (config.json + safetensors)."""
        cfg = load_config(path)
        return cls(cfg, load_weights(path, cfg))

    # ----------------------------------------------------------------- full sequences

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits at every position of fresh sequences (no cache), for parity checks.

        Arguments: input_ids (b, t) ints. Returns logits (b, t, V) float32.
        """
        ids = self._check_ids(np.asarray(input_ids), ndim=2)
        b, t_len = ids.shape
        cfg = self.config
        cos, sin = rope_tables(np.arange(t_len), head_size=cfg.head_dim, theta=cfg.rope_theta)
        h = self.embed[ids]  # (b, t, D)
        conv, ssm, kv = self._zero_state(b)
        for lw in self.layers:
            h, *_ = layer_sequence(cfg, lw, h, conv, ssm, kv, kv, cos, sin)
        return self._logits(h)

    # ----------------------------------------------------------------- cache and slots

    def allocate_cache(self, n_slots: int, max_len: int) -> FalconH1Cache:
        """Zeroed state for ``n_slots`` sequences of up to ``max_len`` tokens each."""
        if n_slots < 1 or max_len < 1:
            raise BackendError(
                f"allocate_cache needs n_slots >= 1 and max_len >= 1, got {n_slots}, {max_len}"
            )
        cfg = self.config
        L, K = cfg.num_hidden_layers, cfg.mamba_d_conv
        H, P, N = cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_d_state
        nkv, hd = cfg.num_key_value_heads, cfg.head_dim
        cos, sin = rope_tables(np.arange(max_len), head_size=hd, theta=cfg.rope_theta)
        return FalconH1Cache(
            conv=np.zeros((L, n_slots, K - 1, cfg.conv_dim), dtype=np.float32),
            ssm=np.zeros((L, n_slots, H, N, P), dtype=np.float32),
            keys=np.zeros((L, n_slots, nkv, max_len, hd), dtype=np.float32),
            values=np.zeros((L, n_slots, nkv, max_len, hd), dtype=np.float32),
            lengths=np.zeros(n_slots, dtype=np.int64),
            cos=cos,
            sin=sin,
        )

    def reset_slot(self, cache: FalconH1Cache, slot: int) -> None:
        """Empty a slot. Keys past ``lengths`` are never read, so only states are zeroed."""
        self._check_slot(cache, slot)
        cache.conv[:, slot] = 0.0
        cache.ssm[:, slot] = 0.0
        cache.lengths[slot] = 0

    def copy_slot(self, cache: FalconH1Cache, src: int, dst: int) -> None:
        """Make slot ``dst`` continue exactly where ``src`` is (e.g. one prompt, many traces)."""
        self._check_slot(cache, src)
        self._check_slot(cache, dst)
        if src == dst:
            return
        n = int(cache.lengths[src])
        cache.conv[:, dst] = cache.conv[:, src]
        cache.ssm[:, dst] = cache.ssm[:, src]
        cache.keys[:, dst, :, :n] = cache.keys[:, src, :, :n]
        cache.values[:, dst, :, :n] = cache.values[:, src, :, :n]
        cache.lengths[dst] = n

    # ----------------------------------------------------------------- prefill and decode

    def prefill(self, input_ids: np.ndarray, cache: FalconH1Cache, slot: int) -> np.ndarray:
        """Append tokens to one slot (a prompt, or more text after earlier tokens).

        Arguments: input_ids (t,) ints, t >= 1. Returns the logits (V,) float32 after the last
        of them. The slot's conv window, SSM state, keys and length are updated in place.
        """
        ids = self._check_ids(np.asarray(input_ids), ndim=1)
        self._check_slot(cache, slot)
        cfg = self.config
        start, t_len = int(cache.lengths[slot]), ids.shape[0]
        if t_len == 0:
            raise BackendError("prefill needs at least one token")
        if start + t_len > cache.max_len:
            raise BackendError(
                f"slot {slot} holds {start} tokens; {t_len} more exceed the cache's max_len "
                f"{cache.max_len}. Allocate the cache with a larger max_len or shorten the prompt"
            )
        cos, sin = cache.cos[start : start + t_len], cache.sin[start : start + t_len]
        h = self.embed[ids][None]  # (1, t, D)
        for i, lw in enumerate(self.layers):
            k_past = cache.keys[i, slot : slot + 1, :, :start]  # (1, nkv, start, hd)
            v_past = cache.values[i, slot : slot + 1, :, :start]
            h, conv, ssm, k, v = layer_sequence(
                cfg,
                lw,
                h,
                cache.conv[i, slot : slot + 1],
                cache.ssm[i, slot : slot + 1],
                k_past,
                v_past,
                cos,
                sin,
            )
            cache.conv[i, slot] = conv[0]
            cache.ssm[i, slot] = ssm[0]
            cache.keys[i, slot, :, start : start + t_len] = k[0]
            cache.values[i, slot, :, start : start + t_len] = v[0]
        cache.lengths[slot] = start + t_len
        return self._logits(h[:, -1])[0]

    def decode(self, tokens: np.ndarray, cache: FalconH1Cache, slots: np.ndarray) -> np.ndarray:
        """Advance each given slot by one token, all in one batched step.

        Arguments: tokens (b,) ints, slots (b,) distinct slot indices, each slot at its own
        length. Returns logits (b, V) float32 for the next position of each slot.
        """
        ids = self._check_ids(np.asarray(tokens), ndim=1)
        slots = np.asarray(slots, dtype=np.int64)
        self._check_slots(cache, slots, ids.shape[0])
        cfg = self.config
        pos = cache.lengths[slots]  # (b,) position of the new token
        span = int(pos.max()) + 1  # keys any row can read
        # A contiguous run of slots is a basic slice: views instead of gathered copies.
        rows = _as_slice(slots)
        lengths = pos + 1
        cos, sin = cache.cos[pos], cache.sin[pos]  # (b, hd)
        h = self.embed[ids]  # (b, D)
        for i, lw in enumerate(self.layers):

            def write_kv(k, v, i=i):
                cache.keys[i, slots, :, pos] = k  # (b, nkv, hd) at each row's position
                cache.values[i, slots, :, pos] = v
                return cache.keys[i, rows, :, :span], cache.values[i, rows, :, :span], lengths

            h, conv, ssm = layer_step(
                cfg, lw, h, cache.conv[i, rows], cache.ssm[i, rows], write_kv, cos, sin
            )
            if not isinstance(rows, slice):  # gathered copies: scatter them back
                cache.conv[i, rows] = conv
                cache.ssm[i, rows] = ssm
        cache.lengths[slots] = lengths
        return self._logits(h)

    # ----------------------------------------------------------------- helpers

    def _logits(self, h: np.ndarray) -> np.ndarray:
        """Final norm and lm_head: h (..., D) -> (..., V) float32."""
        return rms_norm(h, self.final_norm, self.config.rms_norm_eps) @ self.lm_head

    def _zero_state(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        conv = np.zeros((b, cfg.mamba_d_conv - 1, cfg.conv_dim), dtype=np.float32)
        ssm = np.zeros(
            (b, cfg.mamba_n_heads, cfg.mamba_d_state, cfg.mamba_d_head), dtype=np.float32
        )
        kv = np.zeros((b, cfg.num_key_value_heads, 0, cfg.head_dim), dtype=np.float32)
        return conv, ssm, kv

    def _check_ids(self, ids: np.ndarray, ndim: int) -> np.ndarray:
        if ids.ndim != ndim or not np.issubdtype(ids.dtype, np.integer):
            raise BackendError(
                f"token ids must be a {ndim}-D integer array, got {ids.dtype} "
                f"with shape {ids.shape}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise BackendError(
                f"token id out of range 0..{self.config.vocab_size - 1}: min {ids.min()}, "
                f"max {ids.max()}; the tokenizer does not match this checkpoint"
            )
        return ids

    @staticmethod
    def _check_slot(cache: FalconH1Cache, slot: int) -> None:
        if not 0 <= slot < cache.n_slots:
            raise BackendError(f"slot {slot} is outside the cache's 0..{cache.n_slots - 1}")

    @staticmethod
    def _check_slots(cache: FalconH1Cache, slots: np.ndarray, b: int) -> None:
        if slots.shape != (b,) or b == 0:
            raise BackendError(f"decode needs one slot per token: {b} tokens, slots {slots.shape}")
        if slots.min() < 0 or slots.max() >= cache.n_slots:
            raise BackendError(f"decode slots must lie in 0..{cache.n_slots - 1}")
        run = slots[-1] - slots[0] == b - 1 and bool((np.diff(slots) == 1).all())
        if not run and np.unique(slots).size != b:  # a consecutive run is distinct already
            raise BackendError("decode slots must be distinct: one token per slot per step")
        full = slots[cache.lengths[slots] >= cache.max_len]
        if full.size:
            raise BackendError(
                f"slot {int(full[0])} is full ({cache.max_len} tokens); end that sequence or "
                "allocate the cache with a larger max_len"
            )


def _as_slice(slots: np.ndarray) -> slice | np.ndarray:
    """slots as a slice when they are consecutive ascending indices, else unchanged."""
    first = int(slots[0])
    if np.array_equal(slots, np.arange(first, first + slots.size)):
        return slice(first, first + slots.size)
    return slots
