"""Grouped-query softmax attention: causal prefill, and one-token decode over a KV cache.

Not here: projections, RoPE and the KV cache's storage (the model owns those). Query head h
reads KV head h // (h_total / g). Scores are scaled by d**-0.5 and the softmax subtracts the
row maximum. Keys and values are laid out (b, g, s, d), the KV cache's own layout, so each
head's keys are one contiguous (s, d) matrix. Decode rows may hold different numbers of cached
tokens (``lengths``); keys at or past a row's length are masked out.

    o = attention_prefill(q, k, v, offset=0)        # q (b, t, h, d), k/v (b, g, s, d)
    o = attention_decode(q1, k_cache, v_cache, lengths)   # q1 (b, h, d), caches (b, g, s, d)
"""

from __future__ import annotations

import numpy as np


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; masked entries are -inf and every row keeps one finite entry."""
    scores = scores - scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def attention_prefill(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, offset: int = 0
) -> np.ndarray:
    """Causal GQA attention for a block of queries that follows ``offset`` earlier keys.

    Arguments: q (b, t, h, d); k, v (b, g, s, d) with s = offset + t (cached keys first);
    query i sits at position offset + i and sees keys 0 .. offset + i.
    Returns (b, t, h, d).
    """
    b, t_len, h, d = q.shape
    g, s_len = k.shape[1], k.shape[2]
    r = h // g
    qg = q.reshape(b, t_len, g, r, d).transpose(0, 2, 3, 1, 4)  # (b, g, r, t, d)
    kt = k.transpose(0, 1, 3, 2)  # (b, g, d, s)
    scores = np.matmul(qg, kt[:, :, None]) * (d**-0.5)  # (b, g, r, t, s)
    future = np.arange(s_len)[None, :] > (offset + np.arange(t_len))[:, None]  # (t, s)
    # An additive 0 / -inf mask broadcasts in place; boolean-mask assignment is ~10x slower.
    scores += np.where(future, np.float32(-np.inf), np.float32(0.0))
    probs = _softmax(scores)
    out = np.matmul(probs, v[:, :, None])  # (b, g, r, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t_len, h, d)  # (b, t, h, d)


def attention_decode(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """One query per row against that row's first ``lengths[row]`` cached keys.

    Arguments: q (b, h, d); k_cache, v_cache (b, g, s, d), the new token's key already written;
    lengths (b,) ints in 1..s. Returns (b, h, d).
    """
    b, h, d = q.shape
    g, s_len = k_cache.shape[1], k_cache.shape[2]
    # Scale the (b, h, d) query rather than the (b, h, s) scores: fewer elements once s > d.
    qg = (q * q.dtype.type(d**-0.5)).reshape(b, g, h // g, d)  # (b, g, r, d)
    scores = np.matmul(qg, k_cache.transpose(0, 1, 3, 2))  # (b, g, r, s)
    lengths = np.asarray(lengths)
    if lengths.min() < s_len:  # rows of equal length (forked traces) need no mask
        invalid = np.arange(s_len)[None, :] >= lengths[:, None]  # (b, s)
        scores += np.where(invalid, np.float32(-np.inf), np.float32(0.0))[:, None, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    # Normalise after the value product: divides (b, h, d) outputs instead of (b, h, s) weights.
    out = np.matmul(scores, v_cache)  # (b, g, r, d)
    out /= scores.sum(axis=-1, keepdims=True)
    return out.reshape(b, h, d)


def attention_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, positions: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Naive softmax attention, one row, query and head at a time, in float64.

    Arguments: q (b, t, h, d); k, v (b, g, s, d); positions (b, t) the absolute position of each
    query; lengths (b,) valid keys per row. Query (row, i) sees keys j <= positions[row, i] and
    j < lengths[row]. Returns (b, t, h, d).
    """
    b, t_len, h, d = q.shape
    g = k.shape[1]
    out = np.zeros(q.shape)
    for r in range(b):
        for i in range(t_len):
            for head in range(h):
                kv = head // (h // g)
                last = min(int(positions[r, i]) + 1, int(lengths[r]))
                s = [float(np.dot(q[r, i, head], k[r, kv, j])) / np.sqrt(d) for j in range(last)]
                m = max(s)
                wts = [np.exp(x - m) for x in s]
                tot = sum(wts)
                for j in range(last):
                    out[r, i, head] += wts[j] / tot * v[r, kv, j].astype(np.float64)
    return out
