"""Stop rules: after each vote, whether to stop sampling and answer now.

Every rule reads a `VoteState` (votes in casting order, summed per class) and says stop or
go on; each has a slow reference (`reference_*`) that recounts the votes from scratch with
plain loops, which tests/policies/test_stop.py compares it against.

    TauConsensus(0.95)       DeepConf's consensus stop: beta = V(leader)/sum V >= tau
                             (Fu et al. 2025, arXiv 2508.15260, Alg. 2)
    EscWindow(8)             Early-Stopping Self-Consistency: votes come in windows of w;
                             stop when a window is unanimous (Li et al., ICLR 2024,
                             arXiv 2401.10480)
    BetaPosterior(0.95)      Adaptive-Consistency's Beta stop: P(p_leader > p_runner-up)
                             under Beta(v1 + 1, v2 + 1) >= the confidence (Aggarwal et al.,
                             EMNLP 2023, arXiv 2305.11860)
    DirichletPosterior(0.95) its Dirichlet stop over every answer seen: P(the leader is the
                             true majority) under Dirichlet(v + 1) >= the confidence; the
                             Beta stop for two answers (deepconf.policies.posterior)
    WeightedPosterior(2.0)   the same posterior over confidence-weighted pseudo-counts, by
                             its normal approximation: stop when z >= the bar
    NeverStop()              sample the whole budget (majority@N)

Not here: who votes and with what weight (deepconf.policies.run).

    rule = EscWindow(8)
    rule.should_stop(state)        # state: deepconf.policies.votes.VoteState
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from deepconf.errors import ConfigError
from deepconf.policies.posterior import (
    beta_leader_probability,
    dirichlet_leader_probability,
    exact_dirichlet_leader_probability,
    reference_beta_leader_probability,
)
from deepconf.policies.votes import VoteState
from deepconf.voting import vote

__all__ = [
    "BetaPosterior",
    "DirichletPosterior",
    "EscWindow",
    "NeverStop",
    "StopRule",
    "TauConsensus",
    "WeightedPosterior",
    "beta_leader_probability",
    "reference_beta_leader_probability",
    "reference_should_stop",
]


class StopRule(Protocol):
    """Whether the votes so far are enough to answer."""

    name: str

    def should_stop(self, state: VoteState) -> bool: ...


@dataclass(frozen=True, slots=True)
class NeverStop:
    """Never stop early: majority@N spends its whole budget."""

    name: str = "never"

    def should_stop(self, state: VoteState) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TauConsensus:
    """DeepConf's consensus stop (arXiv 2508.15260, Alg. 2): stop once the leader holds at
    least tau of the (weighted) vote. With weights 1 it is the plain-count rule."""

    tau: float = 0.95
    name: str = "tau"

    def __post_init__(self) -> None:
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")

    def should_stop(self, state: VoteState) -> bool:
        return state.votes > 0 and state.beta >= self.tau


@dataclass(frozen=True, slots=True)
class EscWindow:
    """Early-Stopping Self-Consistency (arXiv 2401.10480): samples come in windows of
    `window`; after each full window, stop if all its answers agree. Windows do not
    overlap, as in the paper, so the rule is only checked after every `window`-th vote."""

    window: int = 8
    name: str = "esc"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"ESC window must be >= 1, got {self.window}")

    def should_stop(self, state: VoteState) -> bool:
        # `run` counts the latest votes of one class: a unanimous last window is run >= w.
        return state.votes > 0 and state.votes % self.window == 0 and state.run >= self.window


@dataclass(frozen=True, slots=True)
class BetaPosterior:
    """Adaptive-Consistency's Beta stop (arXiv 2305.11860, §2.2): with v1 votes for the
    leader and v2 for the runner-up, stop when P(p1 > p2 | Beta(v1+1, v2+1)) >= confidence,
    from `min_votes` votes on. Plain counts: weights are ignored. Answers beyond the top two
    are ignored too: DirichletPosterior weighs them."""

    confidence: float = 0.95
    min_votes: int = 4
    name: str = "beta"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)

    def should_stop(self, state: VoteState) -> bool:
        if state.votes < max(1, self.min_votes):
            return False
        rows = sorted(state.rows.values(), key=lambda r: -r.count)
        v1 = rows[0].count
        v2 = rows[1].count if len(rows) > 1 else 0
        return beta_leader_probability(v1, v2) >= self.confidence


def _check_confidence(confidence: float) -> None:
    # At or below 1/2 a tied vote could stop; at 1 no finite count ever does.
    if not 0.5 < confidence < 1:
        raise ConfigError(f"posterior confidence must be in (0.5, 1), got {confidence}")


@dataclass(frozen=True, slots=True)
class DirichletPosterior:
    """Adaptive-Consistency's Dirichlet stop (Aggarwal et al., "Let's Sample Step by Step",
    EMNLP 2023, arXiv 2305.11860, §2.2): with counts v_1..v_m over the m answers seen, stop
    when P(the leader's share is the largest | Dirichlet(v + 1)) >= confidence (the paper's
    default 0.95), from `min_votes` votes on. Plain counts: weights are ignored.

    For at most two answers it decides exactly as BetaPosterior; with more it stops no
    sooner, since votes for a third answer make the leader less sure than the top two alone
    say. The probability is computed without randomness (deepconf.policies.posterior), so
    live solves and replay stop at the same vote."""

    confidence: float = 0.95
    min_votes: int = 4
    name: str = "dirichlet"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)

    def should_stop(self, state: VoteState) -> bool:
        if state.votes < max(1, self.min_votes):
            return False
        counts = [r.count for r in state.rows.values()]
        return dirichlet_leader_probability(counts) >= self.confidence


@dataclass(frozen=True, slots=True)
class WeightedPosterior:
    """A confidence-weighted posterior: the Beta posterior of BetaPosterior over pseudo-
    counts, each vote counting its weight scaled so the weights average 1 (so n votes still
    carry n votes' evidence, split by confidence), judged by the normal approximation
    z = (mean - 1/2) / sd; stop at z >= `z`, from `min_votes` votes on. With equal weights
    it is the rule stop-rules.md measured ("leader vs runner-up, z > 2, from the 4th")."""

    z: float = 2.0
    min_votes: int = 4
    name: str = "weighted-beta"

    def should_stop(self, state: VoteState) -> bool:
        if state.votes < max(1, self.min_votes):
            return False
        total = state.total_weight
        if total <= 0:
            return False
        leader, runner = state.top_two()
        assert leader is not None
        scale = state.votes / total
        a = leader.weight * scale + 1
        b = (runner.weight * scale if runner is not None else 0.0) + 1
        return _z(a, b) >= self.z


def _z(a: float, b: float) -> float:
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    return (mean - 0.5) / sd


def reference_should_stop(rule: StopRule, keys: Sequence[str], weights: Sequence[float]) -> bool:
    """Each rule's decision recounted from the whole list of votes with plain loops."""
    n = len(keys)
    if isinstance(rule, NeverStop):
        return False
    if isinstance(rule, TauConsensus):
        return n > 0 and vote(list(keys), list(weights)).beta >= rule.tau
    if isinstance(rule, EscWindow):
        w = rule.window
        return n > 0 and n % w == 0 and len(set(keys[n - w :])) == 1
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for k, w in zip(keys, weights, strict=True):
        counts[k] = counts.get(k, 0) + 1
        sums[k] = sums.get(k, 0.0) + w
    if isinstance(rule, BetaPosterior):
        if n < max(1, rule.min_votes):
            return False
        top = [*sorted(counts.values(), reverse=True), 0]
        p = reference_beta_leader_probability(top[0], top[1])
        return p >= rule.confidence
    if isinstance(rule, DirichletPosterior):
        if n < max(1, rule.min_votes):
            return False
        return exact_dirichlet_leader_probability(list(counts.values())) >= rule.confidence
    if isinstance(rule, WeightedPosterior):
        total = math.fsum(sums.values())
        if n < max(1, rule.min_votes) or total <= 0:
            return False
        table = vote(list(keys), list(weights))
        top = [r.weight * n / total for r in table.rows] + [0.0]
        return _z(top[0] + 1, top[1] + 1) >= rule.z
    raise TypeError(f"no reference for {rule!r}")
