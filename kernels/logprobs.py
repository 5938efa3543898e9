"""Raw top-k log-softmax over the vocabulary, what DeepConf's token confidence needs.

Not here: temperature, top-p and sampling (the engine does those). "Raw" means the logits as
the model gives them, before any temperature, as vLLM reports logprobs by default.

    ids, lps = top_k_logprobs(logits, k=20)     # logits (b, v) -> ids (b, k), lps (b, k)
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, stable: x - max - log(sum(exp(x - max)))."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_k_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens per row and their log-probabilities, sorted descending.

    Arguments: logits (b, v), k in 1..v. Returns ids (b, k) int64 and logprobs (b, k) float32.
    argpartition finds the k largest in O(v); only those k are then sorted. Ties keep
    argpartition's order, so the ids of equal logits may come in any order.
    """
    b, v = logits.shape
    if not 1 <= k <= v:
        raise ValueError(f"top_k_logprobs: k must be in 1..{v} (the vocabulary size), got {k}")
    logits = np.asarray(logits, dtype=np.float32)
    row_max = logits.max(axis=-1, keepdims=True)  # (b, 1)
    # Subtract the max before anything else: (top - max) - log(sum) keeps float32 digits that
    # top - (max + log(sum)) would lose for logits far from zero.
    log_sum = np.log(np.exp(logits - row_max).sum(axis=-1, keepdims=True))  # (b, 1)
    ids = (
        np.argpartition(-logits, k - 1, axis=-1)[:, :k] if k < v else np.tile(np.arange(v), (b, 1))
    )
    top = np.take_along_axis(logits, ids, axis=-1)  # (b, k)
    order = np.argsort(-top, axis=-1, kind="stable")  # (b, k)
    ids = np.take_along_axis(ids, order, axis=-1).astype(np.int64)
    top = np.take_along_axis(top, order, axis=-1)  # (b, k)
    return ids, ((top - row_max) - log_sum).astype(np.float32)


def top_k_logprobs_reference(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 log-softmax and a full sort per row; the slow reference."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64))
    ids = np.argsort(-lp, axis=-1, kind="stable")[:, :k]
    return ids, np.take_along_axis(lp, ids, axis=-1)
