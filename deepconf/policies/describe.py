"""A policy in words: what `deepconf solve` prints and `--json` records, so a user who chose
`--policy esc` (or got the default, DeepConf-low) can see which rules decided the answer.

Each part of a `Policy` gets a short phrase with its settings; a part this module does not
know (one a user built) is named by its `name`. Nothing here decides anything.

    describe(named_policy("deepconf-low"))
    # {"name": "deepconf-low", "warmup": "warm-up 16", "vote": "weighted by lowest-group
    #  confidence", "filter": "prune traces below the warm-up's top-10% cut",
    #  "stop": "stop at consensus >= 0.95"}
    describe_line(describe(named_policy("esc")))
    # "esc (warm-up 1; plain count; no filter; stop when a window of 8 answers agrees)"
"""

from __future__ import annotations

from collections.abc import Mapping

from deepconf.policies.filters import GroupThresholdPrune, NoFilter, TopEtaFilter, TraceFilter
from deepconf.policies.run import Policy
from deepconf.policies.signals import (
    RawWeights,
    SoftmaxWeights,
    TraceSignal,
    UniformWeights,
    VoteWeights,
)
from deepconf.policies.stop import (
    BetaPosterior,
    DirichletPosterior,
    EscWindow,
    NeverStop,
    StopRule,
    TauConsensus,
    WeightedPosterior,
)
from deepconf.policies.warmup import AdaptiveWarmup, FixedWarmup, WarmupRule

__all__ = ["describe", "describe_line"]

_SIGNALS = {
    "lowest": "lowest-group confidence",
    "bottom": "bottom-group confidence",
    "tail": "tail confidence",
    "mean": "mean confidence",
    "self-certainty": "self-certainty",
}


def describe(policy: Policy) -> dict[str, str]:
    """{"name", "warmup", "vote", "filter", "stop"}: the policy's parts in words."""
    return {
        "name": policy.name,
        "warmup": _warmup(policy.warmup),
        "vote": _vote(policy.weights, policy.signal),
        "filter": _filter(policy.filter, policy.signal),
        "stop": _stop(policy.stop),
    }


def describe_line(described: Mapping[str, str]) -> str:
    """One line from `describe`'s words (as a result records them): the name, then the
    parts in parentheses."""
    d = described
    return f"{d['name']} ({d['warmup']}; {d['vote']}; {d['filter']}; {d['stop']})"


def _signal(signal: TraceSignal) -> str:
    return _SIGNALS.get(signal.name, signal.name)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _warmup(rule: WarmupRule) -> str:
    if isinstance(rule, AdaptiveWarmup):
        first = _ordinal(rule.min_traces)
        return f"warm-up up to {rule.traces}, ending once the stop rule fires from the {first}"
    if isinstance(rule, FixedWarmup):
        return f"warm-up {rule.traces}"
    return rule.name


def _vote(weights: VoteWeights, signal: TraceSignal) -> str:
    if isinstance(weights, UniformWeights):
        return "plain count"
    if isinstance(weights, RawWeights):
        return f"weighted by {_signal(signal)}"
    if isinstance(weights, SoftmaxWeights):
        return f"weighted by softmax({_signal(signal)} / {weights.temperature:g})"
    return f"{weights.name} weights of {_signal(signal)}"


def _filter(rule: TraceFilter, signal: TraceSignal) -> str:
    if isinstance(rule, NoFilter):
        return "no filter"
    if isinstance(rule, GroupThresholdPrune):
        return f"prune traces below the warm-up's top-{rule.eta:g}% cut"
    if isinstance(rule, TopEtaFilter):
        return f"keep the top {rule.eta:g}% by {_signal(signal)}"
    return rule.name


def _stop(rule: StopRule) -> str:
    if isinstance(rule, NeverStop):
        return "no early stop"
    if isinstance(rule, TauConsensus):
        return f"stop at consensus >= {rule.tau:g}"
    if isinstance(rule, EscWindow):
        return f"stop when a window of {rule.window} answers agrees"
    if isinstance(rule, BetaPosterior):
        return (
            f"stop at Beta P(leader beats runner-up) >= {rule.confidence:g}"
            f" from {rule.min_votes} votes"
        )
    if isinstance(rule, DirichletPosterior):
        return (
            f"stop at Dirichlet P(leader is the majority) >= {rule.confidence:g}"
            f" from {rule.min_votes} votes"
        )
    if isinstance(rule, WeightedPosterior):
        return f"stop at posterior z >= {rule.z:g} from {rule.min_votes} votes"
    return rule.name
