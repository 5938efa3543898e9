"""Warm-up rules: how many traces run to completion before the threshold is set and the
stop rule is first asked.

    FixedWarmup(16)        DeepConf's N_init (arXiv 2508.15260, Alg. 2): 16 traces, always
    AdaptiveWarmup(16, 4)  at most 16, but from the 4th finished warm-up trace on, the
                           threshold and vote are formed from the warm-up so far after each
                           one, and the warm-up (and the solve) ends as soon as the stop rule
                           fires: on an easy problem 4 agreeing traces need not wait for 16.

    FixedWarmup(16).checks_after(5)   # -> False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from deepconf.errors import ConfigError

__all__ = ["AdaptiveWarmup", "FixedWarmup", "WarmupRule"]


class WarmupRule(Protocol):
    name: str
    traces: int

    def checks_after(self, ended: int) -> bool:
        """Whether the stop rule is asked after the `ended`-th warm-up trace ends."""
        ...


@dataclass(frozen=True, slots=True)
class FixedWarmup:
    traces: int = 16
    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.traces < 1:
            raise ConfigError(f"warm-up must be >= 1 trace, got {self.traces}")

    def checks_after(self, ended: int) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class AdaptiveWarmup:
    traces: int = 16
    min_traces: int = 4
    name: str = "adaptive"

    def __post_init__(self) -> None:
        if not 1 <= self.min_traces <= self.traces:
            raise ConfigError(
                f"need 1 <= min_traces <= traces, got {self.min_traces} and {self.traces}"
            )

    def checks_after(self, ended: int) -> bool:
        return ended >= self.min_traces
