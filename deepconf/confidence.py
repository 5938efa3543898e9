"""Token, group and trace confidence: pure, vectorised, no I/O.

Token confidence is the negative mean of the k top logprobs at a position (paper Eq. 2):
    C_i = -(1/k) * sum_{j<=k} log P_i(j)
Larger C means more confident: a peaked distribution has a very negative tail in its
top-k, so C is large (15-22 for k=20); a flat one gives C near ln k.

Group confidence is the mean of C over a trailing window of n tokens (Eq. 4), stride 1.
Online, a trace can only be judged once its window is full; post hoc, a trace shorter than
the window has one group, its mean.

    confs = token_confidence(top_logprobs)              # (n, k) -> (n,)
    m = trace_metrics(confs, window=2048)               # .mean .tail .bottom .lowest
    w = GroupWindow(2048); g = w.push(c)                # online: None until full
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

# Servers signal "too unlikely to represent" with -9999 (OpenAI, vLLM's clamp of -inf) or
# send -inf / NaN outright. Averaged raw, one such value would move C by ~500 for k=20. We
# clamp every sentinel to this floor: e^-100 is still "as unlikely as it gets" and keeps
# such a token confident (its top-k tail is tiny) without dominating the mean.
LOGPROB_FLOOR = -100.0


def token_confidence(top_logprobs: np.ndarray) -> np.ndarray:
    """Per-token confidence from top-k logprobs.

    Arguments:
        top_logprobs: (n, k) logprobs, the k candidates at each position. NaN marks a
            missing entry (a position where the server sent fewer than k); it is left out
            of that position's mean. Values <= -9999, -inf, and anything below
            LOGPROB_FLOOR are clamped to LOGPROB_FLOOR.
    Return:
        (n,) float64 confidences C_i = -mean_j logprob_ij. A row with no entries at all
        gets confidence 0.0 (no evidence either way).
    """
    lp = np.asarray(top_logprobs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"top_logprobs must be (n, k), got shape {lp.shape}")
    # Hot path (every streamed chunk): full rows need no mask. np.maximum clamps -inf and
    # -9999 to the floor and propagates NaN, so a NaN sum means a padded row: take the
    # masked path for the whole batch (rare: short rows are a server quirk).
    # np.add.reduce is what .sum() calls, minus its Python wrapper (one call per streamed
    # read). The total of the row sums is NaN exactly when a row sum is: after the clamp no
    # value is -inf, so no inf - inf can make one.
    sums = np.add.reduce(np.maximum(lp, LOGPROB_FLOOR), axis=1)  # (n,)
    if lp.shape[1] > 0 and not math.isnan(np.add.reduce(sums)):
        return sums / -lp.shape[1]
    present = ~np.isnan(lp)  # (n, k)
    clamped = np.where(present, np.maximum(lp, LOGPROB_FLOOR), 0.0)  # -inf -> floor
    counts = present.sum(axis=1)  # (n,)
    sums = clamped.sum(axis=1)  # (n,)
    return np.divide(-sums, counts, out=np.zeros(lp.shape[0]), where=counts > 0)


def group_confidences(token_conf: np.ndarray, window: int) -> np.ndarray:
    """Sliding-window means of token confidence, stride 1, full windows only.

    Arguments:
        token_conf: (n,) token confidences.
        window: group size in tokens.
    Return:
        (max(1, n - window + 1),) group means. A trace shorter than the window has one
        group, its mean; an empty trace has one group of 0.0 (as the reference code does).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c = np.asarray(token_conf, dtype=np.float64)
    n = c.shape[0]
    if n == 0:
        return np.zeros(1)
    if n < window:
        return np.array([c.mean()])
    # Cumulative sums make every window O(1); float64 keeps the error ~1e-12 for any
    # realistic trace length.
    csum = np.concatenate(([0.0], np.cumsum(c)))  # (n+1,)
    return (csum[window:] - csum[:-window]) / window  # (n - window + 1,)


@dataclass(frozen=True, slots=True)
class TraceMetrics:
    """Trace-level confidences (higher is more confident for all four)."""

    mean: float  # mean token confidence over the trace (Eq. 3)
    tail: float  # mean over the last `tail` tokens (Eq. 7)
    bottom: float  # mean of the lowest bottom_fraction of groups (Eq. 5)
    lowest: float  # lowest group (Eq. 6): the metric online DeepConf uses

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def trace_metrics(
    token_conf: np.ndarray, window: int = 2048, tail: int = 2048, bottom_fraction: float = 0.1
) -> TraceMetrics:
    """All four trace metrics of one trace's token confidences (n,)."""
    c = np.asarray(token_conf, dtype=np.float64)
    groups = group_confidences(c, window)  # (g,)
    n_bottom = max(1, int(groups.shape[0] * bottom_fraction))
    # np.partition puts the n_bottom smallest first without a full sort.
    bottom = np.partition(groups, n_bottom - 1)[:n_bottom].mean()
    return TraceMetrics(
        mean=float(c.mean()) if c.size else 0.0,
        tail=float(c[-tail:].mean()) if c.size else 0.0,
        bottom=float(bottom),
        lowest=float(groups.min()),
    )


class GroupWindow:
    """Online group confidence: O(1) per token.

    `push(conf)` returns the mean of the last `window` confidences once the window is full,
    and None before (a trace cannot be judged on a partial window). `lowest` is the lowest
    full-window mean so far (None until the window fills); `mean` the running mean of a
    partial window, which is what a trace shorter than the window is judged by post hoc.
    """

    __slots__ = ("_buf", "_sum", "count", "lowest", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._buf: deque[float] = deque()
        self._sum = 0.0
        self.count = 0  # tokens pushed in all
        self.lowest: float | None = None

    def push(self, conf: float) -> float | None:
        buf = self._buf
        buf.append(conf)
        self._sum += conf
        self.count += 1
        if len(buf) > self.window:
            self._sum -= buf.popleft()
        if len(buf) < self.window:
            return None
        # A running sum drifts by ~1e-16 per update; resum once per window so error never
        # accumulates over traces of 100k tokens.
        if self.count % self.window == 0:
            self._sum = float(sum(buf))
        group = self._sum / self.window
        if self.lowest is None or group < self.lowest:
            self.lowest = group
        return group

    def push_many(self, confs: np.ndarray) -> float | None:
        """Push several confidences; return the lowest full-window mean among them
        (None if the window is still not full). Used on the streaming hot path."""
        low: float | None = None
        for c in confs.tolist():
            g = self.push(c)
            if g is not None and (low is None or g < low):
                low = g
        return low

    @property
    def mean(self) -> float | None:
        """Mean of the tokens currently in the window (partial or full)."""
        return self._sum / len(self._buf) if self._buf else None
