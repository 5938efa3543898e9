"""Trace signals (one confidence number per trace) and vote weights built from them.

Signals read a trace's TraceMetrics, so they work live and on recorded traces alike:

    lowest, bottom, tail, mean   DeepConf's trace confidences (arXiv 2508.15260, Eqs. 3-7)
    self-certainty               Kang et al. 2025 (arXiv 2502.18581): the mean over tokens of
                                 KL(U || p). Servers return only the top k logprobs, so p is
                                 taken over those k candidates: KL(U_k || p_k) = C_i - ln k,
                                 token confidence minus ln k. Its ranking is the mean's; its
                                 scale (0 for a flat top-k) is what weights see.

Weights turn the signals of the voters into vote weights:

    RawWeights       the signal itself, un-normalised (DeepConf's vote)
    UniformWeights   1 per vote (plain majority)
    SoftmaxWeights   CISC (Taubenfeld et al., ACL Findings 2025, arXiv 2502.06233):
                     softmax(signal / T) within the question

Not here: filters and thresholds (deepconf.policies.filters).

    MetricSignal("tail").value(metrics, k=20)
    SoftmaxWeights(1.0).weights([15.2, 17.9])     # -> [0.0627..., 0.9372...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from deepconf.confidence import TraceMetrics
from deepconf.config import METRICS
from deepconf.errors import ConfigError

__all__ = [
    "MetricSignal",
    "RawWeights",
    "SelfCertainty",
    "SoftmaxWeights",
    "TraceSignal",
    "UniformWeights",
    "VoteWeights",
    "reference_self_certainty",
    "reference_softmax",
]


class TraceSignal(Protocol):
    """One confidence number per trace, higher = more confident."""

    name: str

    def value(self, metrics: TraceMetrics, k: int) -> float: ...


@dataclass(frozen=True, slots=True)
class MetricSignal:
    """One of DeepConf's trace confidences: lowest group (Eq. 6, the online one),
    bottom-10% groups (Eq. 5), tail (Eq. 7) or mean (Eq. 3)."""

    name: str = "lowest"

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise ConfigError(f"unknown signal {self.name!r}: use one of {', '.join(METRICS)}")

    def value(self, metrics: TraceMetrics, k: int) -> float:
        return metrics.get(self.name)


@dataclass(frozen=True, slots=True)
class SelfCertainty:
    """Self-certainty (arXiv 2502.18581) over the top-k candidates: mean token confidence
    minus ln k (see the module docstring for why that is KL(U_k || p_k))."""

    name: str = "self-certainty"

    def value(self, metrics: TraceMetrics, k: int) -> float:
        return metrics.mean - math.log(k)


def reference_self_certainty(top_logprobs: np.ndarray) -> float:
    """The slow reference from the definition: per token, KL(U_k || p) = sum_j (1/k) *
    log((1/k) / p_j) over its k candidates, then the mean over tokens."""
    rows = np.asarray(top_logprobs, dtype=np.float64).tolist()
    per_token = []
    for row in rows:
        k = len(row)
        per_token.append(sum((1.0 / k) * (math.log(1.0 / k) - lp) for lp in row))
    return sum(per_token) / len(per_token)


class VoteWeights(Protocol):
    """Vote weights for the voters' signals (in voting order). `per_trace`: each weight
    depends only on its own trace's signal, so weights never change once given."""

    name: str
    per_trace: bool

    def weights(self, signals: Sequence[float]) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class RawWeights:
    """DeepConf's weight: the signal itself, raw and un-normalised."""

    name: str = "raw"
    per_trace: bool = True

    def weights(self, signals: Sequence[float]) -> list[float]:
        return [float(s) for s in signals]


@dataclass(frozen=True, slots=True)
class UniformWeights:
    """Every vote weighs 1: plain majority."""

    name: str = "uniform"
    per_trace: bool = True

    def weights(self, signals: Sequence[float]) -> list[float]:
        return [1.0] * len(signals)


@dataclass(frozen=True, slots=True)
class SoftmaxWeights:
    """CISC (arXiv 2502.06233): softmax(signal / T) over the question's voters. The paper
    finds within-question discrimination matters more than calibration; T sets how sharply
    the most confident traces dominate (T -> inf: majority)."""

    temperature: float = 1.0
    name: str = "softmax"
    per_trace: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"softmax temperature must be > 0, got {self.temperature}")

    def weights(self, signals: Sequence[float]) -> list[float]:
        if not signals:
            return []
        z = np.asarray(signals, dtype=np.float64) / self.temperature  # (n,)
        e = np.exp(z - z.max())  # shifted: exp never overflows, the ratios are the same
        return (e / e.sum()).tolist()


def reference_softmax(signals: Sequence[float], temperature: float) -> list[float]:
    """The slow reference: exp(s_i / T) / sum_j exp(s_j / T), in exact-ish rationals via
    fsum, with no shift (callers keep s / T small enough for exp)."""
    e = [math.exp(s / temperature) for s in signals]
    total = math.fsum(e)
    return [x / total for x in e]
