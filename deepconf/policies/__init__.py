"""Policies: DeepConf's pieces, and the rules beyond the paper, as small swappable parts.

A `Policy` is (warm-up, signal, weights, filter, stop rule); `PolicyRun` makes one solve's
decisions with it, live (deepconf/online.py) and in replay (eval/replay.py) alike.
`named_policy` builds the named ones at their defaults:

    name               warm-up     signal          weights    filter              stop
    deepconf-low       16          lowest          raw        group prune eta 10  tau 0.95
    deepconf-high      16          lowest          raw        group prune eta 90  tau 0.95
    deepconf-adaptive  16, from 4  lowest          raw        group prune eta 90  tau 0.95
    majority           1           -               uniform    none                never
    tau                16          -               uniform    none                tau 0.95
    esc                1           -               uniform    none                ESC window 8
    beta               1           -               uniform    none                Beta P>=.95, 4 on
    dirichlet          1           -               uniform    none                Dir. P>=.95, 4 on
    beta-z             1           -               uniform    none                z>=2, 4 on
    conf-beta          1           lowest          raw        none                wtd z>=2, 4 on
    cisc               16          lowest          softmax T1 none                tau 0.95
    self-certainty     16          self-certainty  raw        top-eta 90          tau 0.95

`warmup` and `tau` override the warm-up size and tau of the policies that have them (the
CLI's --warmup / --tau); esc and the posterior rules have their own minimum instead.
`keep_percent` (--keep-percent) sets eta of the policies whose filter keeps the top eta% of
the warm-up (config.KEEP_POLICIES); the others have no filter and refuse it.

    policy = named_policy("esc")
    run = PolicyRun(policy, budget=64, k=20, keys=AnswerKeys())
    policy_for(DeepConfConfig(policy="tau", tau=0.9))  # what a solve runs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from deepconf.config import KEEP_POLICIES, POLICY_NAMES, DeepConfConfig
from deepconf.errors import ConfigError
from deepconf.policies.filters import GroupThresholdPrune, NoFilter, TopEtaFilter
from deepconf.policies.run import Ended, Policy, PolicyRun
from deepconf.policies.signals import (
    MetricSignal,
    RawWeights,
    SelfCertainty,
    SoftmaxWeights,
    UniformWeights,
)
from deepconf.policies.stop import (
    BetaPosterior,
    DirichletPosterior,
    EscWindow,
    NeverStop,
    TauConsensus,
    WeightedPosterior,
)
from deepconf.policies.warmup import AdaptiveWarmup, FixedWarmup

__all__ = ["POLICY_NAMES", "Ended", "Policy", "PolicyRun", "named_policy", "policy_for"]

_LOWEST = MetricSignal("lowest")


def _deepconf(eta: float) -> Callable[[int, float], Policy]:
    def make(warmup: int, tau: float) -> Policy:
        name = {10.0: "deepconf-low", 90.0: "deepconf-high"}[eta]
        return Policy(
            name,
            FixedWarmup(warmup),
            _LOWEST,
            RawWeights(),
            GroupThresholdPrune(eta),
            TauConsensus(tau),
        )

    return make


def _answers_only(name: str, warmup: int, stop: object) -> Policy:
    return Policy(name, FixedWarmup(warmup), _LOWEST, UniformWeights(), NoFilter(), stop)  # type: ignore[arg-type]


_MAKERS: dict[str, Callable[[int, float], Policy]] = {
    "deepconf-low": _deepconf(10.0),
    "deepconf-high": _deepconf(90.0),
    "deepconf-adaptive": lambda w, tau: Policy(
        "deepconf-adaptive",
        AdaptiveWarmup(w, min(4, w)),
        _LOWEST,
        RawWeights(),
        GroupThresholdPrune(90.0),
        TauConsensus(tau),
    ),
    "majority": lambda w, tau: _answers_only("majority", 1, NeverStop()),
    "tau": lambda w, tau: _answers_only("tau", w, TauConsensus(tau)),
    "esc": lambda w, tau: _answers_only("esc", 1, EscWindow(8)),
    "beta": lambda w, tau: _answers_only("beta", 1, BetaPosterior(0.95, 4)),
    "dirichlet": lambda w, tau: _answers_only("dirichlet", 1, DirichletPosterior(0.95, 4)),
    "beta-z": lambda w, tau: _answers_only("beta-z", 1, WeightedPosterior(2.0, 4)),
    "conf-beta": lambda w, tau: Policy(
        "conf-beta", FixedWarmup(1), _LOWEST, RawWeights(), NoFilter(), WeightedPosterior(2.0, 4)
    ),
    "cisc": lambda w, tau: Policy(
        "cisc", FixedWarmup(w), _LOWEST, SoftmaxWeights(1.0), NoFilter(), TauConsensus(tau)
    ),
    "self-certainty": lambda w, tau: Policy(
        "self-certainty",
        FixedWarmup(w),
        SelfCertainty(),
        RawWeights(),
        TopEtaFilter(90.0),
        TauConsensus(tau),
    ),
}
assert tuple(_MAKERS) == POLICY_NAMES, "config.POLICY_NAMES lists the policies in this order"


def named_policy(
    name: str, *, warmup: int = 16, tau: float = 0.95, keep_percent: float | None = None
) -> Policy:
    """The named policy at its defaults (warm-up size, tau and keep percent where it has
    them; keep_percent None: the policy's own eta)."""
    maker = _MAKERS.get(name)
    if maker is None:
        raise ConfigError(f"unknown policy {name!r}: use one of {', '.join(POLICY_NAMES)}")
    policy = maker(warmup, tau)
    return policy if keep_percent is None else _keeping(policy, keep_percent)


def _keeping(policy: Policy, eta: float) -> Policy:
    """The policy with its warm-up filter keeping the top eta% instead. At its own eta it is
    unchanged; at another it is renamed, because "deepconf-low" means eta 10 and a summary
    must not call an eta-50 run by that name (deepconf-low and -high then differ in
    nothing, so both become "deepconf (η=50)")."""
    if not isinstance(policy.filter, GroupThresholdPrune | TopEtaFilter):
        raise ConfigError(
            f"--keep-percent sets the warm-up filter, and policy {policy.name!r} has none:"
            f" drop --keep-percent, or choose one of {', '.join(KEEP_POLICIES)}"
        )
    if policy.filter.eta == eta:
        return policy
    base = "deepconf" if policy.name in ("deepconf-low", "deepconf-high") else policy.name
    return dataclasses.replace(
        policy, name=f"{base} (η={eta:g})", filter=dataclasses.replace(policy.filter, eta=eta)
    )


def policy_for(config: DeepConfConfig) -> Policy:
    """The policy an online solve runs: `config.policy`, or deepconf-<variant> by default,
    with the config's warm-up, tau and keep percent."""
    name = config.policy or f"deepconf-{config.variant}"
    return named_policy(
        name, warmup=config.warmup, tau=config.tau, keep_percent=config.keep_percent
    )
