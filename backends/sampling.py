"""Per-sequence sampling, raw top-k logprobs, and safe incremental detokenization.

Pure functions over logits (plus one tiny stateful detokenizer); no model, no engine. Each fast
batched function has a slow one-row reference next to it that the tests compare against.

    params = SamplingParams(temperature=0.6, top_p=0.95, seed=1, logprobs=20)
    ids, lps, lse = top_logprobs(logits, 20)            # raw: before temperature
    toks = sample_batch(logits, temperature=t, top_p=p, top_k=k, uniforms=u)

Sampling is inverse-CDF with ONE uniform draw per token from the sequence's own generator, so a
sequence's tokens depend only on its seed and its logits, never on who shares the batch.
Top-k is applied first, then top-p on the renormalised top-k mass (vLLM's order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepconf.errors import ConfigError
from deepconf.kernels.logprobs import top_k_logprobs

__all__ = [
    "IncrementalDetokenizer",
    "SamplingParams",
    "sample_batch",
    "sample_reference",
    "top_logprobs",
    "top_logprobs_reference",
]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples and what it returns."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int | None = None  # None or 0 = off
    max_tokens: int = 16
    seed: int | None = None  # None: fresh entropy
    stop: tuple[str, ...] = ()
    logprobs: int = 0  # raw top-k logprobs returned per token
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 or None: off), got {self.top_k}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.logprobs < 0:
            raise ConfigError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k largest raw log-softmax values per row (the kernels' top-k log-softmax).

    Arguments: logits (b, V) float32, unscaled. Returns ids (b, k) int64 and logprobs
    (b, k) float32, largest first (k is clipped to V), and the log-sum-exp (b,) float32 so
    callers can take any token's logprob as logits[i, t] - lse[i].
    """
    b, V = logits.shape
    m = logits.max(axis=1, keepdims=True)  # (b, 1)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))).astype(np.float32)  # (b,)
    if k <= 0:
        return np.zeros((b, 0), np.int64), np.zeros((b, 0), np.float32), lse
    ids, lps = top_k_logprobs(logits, min(k, V))  # (b, k), (b, k)
    return ids, lps, lse


def top_logprobs_reference(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """One row, the slow way: full log-softmax in float64, then a full sort."""
    x = row.astype(np.float64)
    logp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    order = sorted(range(len(x)), key=lambda i: -logp[i])[:k]
    return order, [float(logp[i]) for i in order]


def sample_batch(
    logits: np.ndarray,
    *,
    temperature: np.ndarray,
    top_p: np.ndarray,
    top_k: np.ndarray,
    uniforms: np.ndarray,
) -> np.ndarray:
    """One token per row: greedy where temperature is 0, else inverse-CDF sampling.

    Arguments: logits (b, V); temperature, top_p (b,) float; top_k (b,) int (0 = off);
    uniforms (b,) in [0, 1). Returns (b,) int64.
    """
    V = logits.shape[1]
    out = np.argmax(logits, axis=1).astype(np.int64)  # greedy rows keep this
    hot = temperature > 0
    if not hot.any():
        return out
    rows = np.flatnonzero(hot)
    probs = _softmax(logits[rows].astype(np.float64) / temperature[rows, None])  # (r, V)
    u = uniforms[rows]
    filtered = (top_p[rows] < 1) | ((top_k[rows] > 0) & (top_k[rows] < V))
    plain = ~filtered
    if plain.any():  # no filter: the CDF in vocabulary order, no sort needed
        out[rows[plain]] = _inverse_cdf(probs[plain], u[plain])
    if filtered.any():
        p = probs[filtered]
        order = np.argsort(-p, axis=1, kind="stable")  # (f, V)
        ps = np.take_along_axis(p, order, axis=1)
        k = top_k[rows][filtered]
        k = np.where(k > 0, np.minimum(k, V), V)
        ps = np.where(np.arange(V)[None, :] < k[:, None], ps, 0.0)
        ps /= ps.sum(axis=1, keepdims=True)
        before = np.cumsum(ps, axis=1) - ps  # mass strictly ahead of each token
        ps = np.where(before < top_p[rows][filtered, None], ps, 0.0)
        j = _inverse_cdf(ps, u[filtered])
        out[rows[filtered]] = order[np.arange(len(j)), j]
    return out


def sample_reference(
    row: np.ndarray, temperature: float, top_p: float, top_k: int, u: float
) -> int:
    """One row, written out step by step; `sample_batch` must agree with it."""
    if temperature <= 0:
        return int(np.argmax(row))
    p = _softmax(row.astype(np.float64)[None, :] / temperature)[0]
    V = len(p)
    if top_p >= 1 and not 0 < top_k < V:
        return _walk(list(range(V)), [float(x) for x in p], u)
    order = sorted(range(V), key=lambda i: -p[i])
    if 0 < top_k < V:
        order = order[:top_k]
    mass = [float(p[i]) for i in order]
    total = sum(mass)
    mass = [m / total for m in mass]
    kept, kept_mass, ahead = [], [], 0.0
    for i, m in zip(order, mass, strict=True):
        if ahead < top_p:
            kept.append(i)
            kept_mass.append(m)
        ahead += m
    return _walk(kept, kept_mass, u)


def _walk(ids: list[int], mass: list[float], u: float) -> int:
    target = u * sum(mass)
    acc = 0.0
    for i, m in zip(ids, mass, strict=True):
        acc += m
        if acc > target and m > 0:
            return i
    return next(i for i, m in zip(reversed(ids), reversed(mass), strict=True) if m > 0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """First index whose cumulative mass exceeds u * total, skipping zero-mass entries."""
    c = np.cumsum(p, axis=1)  # (r, V)
    target = u * c[:, -1]
    j = (c <= target[:, None]).sum(axis=1)
    j = np.minimum(j, p.shape[1] - 1)
    # Rounding can land j on a zero-mass tail entry; step back to the last entry with mass.
    bad = p[np.arange(len(j)), j] <= 0
    for r in np.flatnonzero(bad):
        j[r] = np.flatnonzero(p[r] > 0)[-1]
    return j


class IncrementalDetokenizer:
    """Turns a token stream into text deltas without ever splitting a multi-byte character.

    Decodes a short window (vLLM's prefix/read offsets) rather than the whole sequence, so the
    cost per token stays constant; a delta is held back while the window's text ends in U+FFFD
    (an incomplete UTF-8 sequence from a byte-level tokenizer).
    """

    __slots__ = ("_ids", "_prefix", "_read", "_tok")

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self._ids.append(token)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """At the end of a sequence: whatever is still held back, U+FFFD included."""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]
