"""Filters and prune rules: which traces may vote, and whether traces are cut while they run.

    NoFilter()                 every trace that ran to its end with an answer votes
    TopEtaFilter(eta)          DeepConf's offline filter (arXiv 2508.15260, Alg. 1) made online:
                               s = the (100 - eta)th percentile of the warm-up's signals;
                               a trace votes if its signal >= s. Nothing is cut mid-trace.
    GroupThresholdPrune(eta)   DeepConf online (Alg. 2): s from the warm-up's lowest-group
                               confidences; a running trace is pruned the moment a full-window
                               group falls below s, and a trace that ends votes if its lowest
                               group >= s. Its signal must be "lowest" (the running minimum of
                               the groups is what the prune watches).

The percentile is numpy's linear one, lowered by deepconf.voting's tie tolerance
(`warmup_threshold`). `reference_threshold` computes it by hand for the property test.

    s = TopEtaFilter(90).threshold([15.1, 17.3, 16.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from deepconf.errors import ConfigError
from deepconf.voting import tolerant_threshold

__all__ = [
    "GroupThresholdPrune",
    "NoFilter",
    "TopEtaFilter",
    "TraceFilter",
    "reference_threshold",
    "warmup_threshold",
]


def warmup_threshold(lowest: np.ndarray, keep_percent: float) -> float:
    """s = the (100 - keep_percent)th percentile (numpy linear) of warm-up lowest-group
    confidences: DeepConf-low (keep 10%) takes the 90th, DeepConf-high (keep 90%) the 10th;
    lowered by the tie tolerance, so a trace whose confidence equals it up to float noise is
    neither pruned nor filtered out (traces of one prompt share their first windows, and the
    percentile often lands exactly on one of them)."""
    return tolerant_threshold(float(np.percentile(lowest, 100.0 - keep_percent)))


def reference_threshold(values: Sequence[float], keep_percent: float) -> float:
    """The slow reference: linear interpolation between order statistics, by hand
    (numpy's 'linear' method: position (n - 1) * q in the sorted values)."""
    v = sorted(values)
    pos = (len(v) - 1) * (100.0 - keep_percent) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    value = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return tolerant_threshold(value)


class TraceFilter(Protocol):
    """Sets the threshold a voter's signal must reach (None: no threshold) from the
    warm-up's signals, and says whether running traces are pruned below it."""

    name: str
    prunes: bool

    def threshold(self, warmup_signals: Sequence[float]) -> float | None: ...


@dataclass(frozen=True, slots=True)
class NoFilter:
    """No threshold: every finished trace with an answer votes."""

    name: str = "none"
    prunes: bool = False

    def threshold(self, warmup_signals: Sequence[float]) -> float | None:
        return None


def _check_eta(eta: float) -> None:
    if not 0 < eta <= 100:
        raise ConfigError(f"eta (the keep percent) must be in (0, 100], got {eta}")


@dataclass(frozen=True, slots=True)
class TopEtaFilter:
    """Keep the top eta% by the policy's signal, the cut set on the warm-up (Alg. 1's
    filter); nothing is pruned mid-trace, so any signal works."""

    eta: float = 90.0
    name: str = "top-eta"
    prunes: bool = False

    def __post_init__(self) -> None:
        _check_eta(self.eta)

    def threshold(self, warmup_signals: Sequence[float]) -> float | None:
        return warmup_threshold(np.asarray(warmup_signals, dtype=np.float64), self.eta)


@dataclass(frozen=True, slots=True)
class GroupThresholdPrune:
    """DeepConf online's prune + filter (Alg. 2) at keep percent eta (10: low, 90: high)."""

    eta: float = 10.0
    name: str = "group-prune"
    prunes: bool = True

    def __post_init__(self) -> None:
        _check_eta(self.eta)

    def threshold(self, warmup_signals: Sequence[float]) -> float | None:
        return warmup_threshold(np.asarray(warmup_signals, dtype=np.float64), self.eta)
