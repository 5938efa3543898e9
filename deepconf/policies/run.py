"""One solve's decisions under a policy, with no I/O: who votes, with what weight, the
prune threshold, and when to stop. The live controller (deepconf/online.py) and replay
(eval/replay.py) both drive a `PolicyRun` with the traces as they end, so the same policy
object makes the same decisions in both (tests/policies/test_live_replay_parity.py).

    1. warm-up: `warmup_ended(trace)` for each warm-up trace that ends; an adaptive warm-up
       may form the vote early and stop (returns True)
    2. `end_warmup()`: threshold s from the warm-up signals, the warm-up voters seed the vote,
       the stop rule is asked; `prune_threshold` is s when the filter prunes, else None
    3. `ended(trace)` for every later trace: it votes if it ran to its end with an answer and
       passes s; after each vote the stop rule is asked (returns True to stop)

A policy is (warm-up, signal, weights, filter, stop rule); deepconf.policies names them.

    run = PolicyRun(named_policy("deepconf-low"), budget=64, k=20, keys=AnswerKeys())
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from deepconf.answers import AnswerKeys
from deepconf.confidence import TraceMetrics
from deepconf.policies.filters import NoFilter, TraceFilter
from deepconf.policies.signals import TraceSignal, UniformWeights, VoteWeights
from deepconf.policies.stop import StopRule
from deepconf.policies.votes import VoteState
from deepconf.policies.warmup import WarmupRule

__all__ = ["Ended", "Policy", "PolicyRun"]


@dataclass(frozen=True, slots=True)
class Policy:
    """A complete DeepConf-style policy, one object per concept."""

    name: str
    warmup: WarmupRule
    signal: TraceSignal
    weights: VoteWeights
    filter: TraceFilter
    stop: StopRule

    @property
    def needs_confidence(self) -> bool:
        """Whether it reads token confidences at all: answer-only samples can replay it
        only when it does not."""
        return not (isinstance(self.weights, UniformWeights) and isinstance(self.filter, NoFilter))


@dataclass(frozen=True, slots=True)
class Ended:
    """A trace that ended without failing: what the policy needs to know of it."""

    index: int  # launch order: voters are kept in it (the vote's first-seen tie-break)
    answer: str | None  # the raw answer
    metrics: TraceMetrics | None  # None for answer-only samples
    finished: bool  # ran to its natural end (not pruned or cancelled)


class PolicyRun:
    """The decisions of one solve (see the module docstring for the call order)."""

    def __init__(self, policy: Policy, budget: int, k: int, keys: AnswerKeys) -> None:
        self.policy = policy
        self.k = k
        # Shared with the caller's votes; answers are keyed only when they vote, as
        # deepconf.voting.vote keys them, so a class keeps the name the live vote gives it.
        self.keys = keys
        self.warmup_traces = min(policy.warmup.traces, budget)
        self.warm: list[Ended] = []  # warm-up traces that ran to their end, by index
        self.warm_ended = 0
        self.threshold: float | None = None
        self.voters: list[Ended] = []
        self.state = VoteState()
        self.stopped = False

    @property
    def prune_threshold(self) -> float | None:
        return self.threshold if self.policy.filter.prunes else None

    def signal(self, e: Ended) -> float:
        return 0.0 if e.metrics is None else self.policy.signal.value(e.metrics, self.k)

    def weights(self) -> list[float]:
        return self.policy.weights.weights([self.signal(v) for v in self.voters])

    def _scored(self, e: Ended) -> bool:
        return e.finished and (e.metrics is not None or not self.policy.needs_confidence)

    def _votes(self, e: Ended) -> bool:
        if not self._scored(e) or e.answer is None:
            return False
        return self.threshold is None or self.signal(e) >= self.threshold

    # 1. warm-up
    def warmup_ended(self, e: Ended) -> bool:
        """A warm-up trace ended; True when an adaptive warm-up's stop rule fired."""
        self.warm_ended += 1
        if self._scored(e):
            bisect.insort(self.warm, e, key=lambda t: t.index)
        if self.warm and self.policy.warmup.checks_after(self.warm_ended):
            self._form()
        return self.stopped

    # 2. threshold, seed, first stop check
    def end_warmup(self) -> bool:
        """Form the vote from the warm-up; True when the solve goes on (there was a warm-up
        trace to set the threshold from and the stop rule did not fire)."""
        if not self.warm:
            return False
        self._form()
        return not self.stopped

    def _form(self) -> None:
        self.threshold = self.policy.filter.threshold([self.signal(e) for e in self.warm])
        self.voters = [e for e in self.warm if self._votes(e)]
        self._recount()
        self.stopped = self.stopped or self.policy.stop.should_stop(self.state)

    # 3. later traces
    def ended(self, e: Ended) -> bool:
        """A later trace ended; True when this vote made the stop rule fire."""
        if not self._votes(e):
            return False
        at_end = not self.voters or self.voters[-1].index < e.index
        bisect.insort(self.voters, e, key=lambda t: t.index)
        if at_end and self.policy.weights.per_trace:
            assert e.answer is not None
            weight = self.policy.weights.weights([self.signal(e)])[0]
            self.state.add(self.keys.key(e.answer), weight, e.answer)
        else:  # a vote landed mid-list, or weights depend on the whole set: recount
            self._recount()
        fired = not self.stopped and self.policy.stop.should_stop(self.state)
        self.stopped = self.stopped or fired
        return fired

    def _recount(self) -> None:
        self.state = VoteState()
        for v, w in zip(self.voters, self.weights(), strict=True):
            assert v.answer is not None
            self.state.add(self.keys.key(v.answer), w, v.answer)
