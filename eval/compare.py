"""Every policy side by side on recorded traces or answer-only samples: one comparison table.

For each problem, R random trace orders are drawn once and every policy runs on the same
orders (paired: differences between policies are not order noise). A policy's accuracy on
one order is its mean correctness over the problems; the table reports the mean over orders
and the interval holding the middle 95% of the per-order accuracies, its tokens per problem,
and its tokens against majority@N (the `majority` policy: N traces, never stopping).

Sweeps vary one dial of one policy (`SWEEPS`): `--sweep esc` adds ESC at windows 4, 8, 16.

    rows = compare_policies(pools, golds, default_policies(answer_only=False), budget=64)
    print(comparison_markdown(rows, budget=64))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepconf.config import POLICY_NAMES
from deepconf.errors import ConfigError
from deepconf.eval.grading import Grader
from deepconf.eval.replay import Pool, _Grades, simulate_policy
from deepconf.policies import Policy, named_policy
from deepconf.policies.filters import GroupThresholdPrune
from deepconf.policies.stop import (
    BetaPosterior,
    DirichletPosterior,
    EscWindow,
    TauConsensus,
    WeightedPosterior,
)
from deepconf.policies.warmup import AdaptiveWarmup, FixedWarmup

__all__ = [
    "SWEEPS",
    "PolicyRow",
    "compare_policies",
    "comparison_markdown",
    "default_policies",
    "pareto_front",
    "sweep_policies",
]


def _with(policy: Policy, label: str, **parts: Any) -> Policy:
    return dataclasses.replace(policy, name=f"{policy.name} ({label})", **parts)


def _sweep_tau() -> list[Policy]:
    return [_with(named_policy("tau"), f"τ={t:g}", stop=TauConsensus(t)) for t in (0.8, 0.9, 0.99)]


def _sweep_esc() -> list[Policy]:
    return [_with(named_policy("esc"), f"w={w}", stop=EscWindow(w)) for w in (4, 16)]


def _sweep_beta() -> list[Policy]:
    return [_with(named_policy("beta"), f"P≥{c:g}", stop=BetaPosterior(c, 4)) for c in (0.9, 0.99)]


def _sweep_dirichlet() -> list[Policy]:
    return [
        _with(named_policy("dirichlet"), f"P≥{c:g}", stop=DirichletPosterior(c, 4))
        for c in (0.9, 0.99)
    ]


def _sweep_beta_z() -> list[Policy]:
    return [
        _with(named_policy("beta-z"), f"z≥{z:g}", stop=WeightedPosterior(z, 4)) for z in (1.5, 3.0)
    ]


def _sweep_deepconf() -> list[Policy]:
    """DeepConf's keep percent and warm-up size, fixed and adaptive (from the 4th trace)."""
    base = dataclasses.replace(named_policy("deepconf-high"), name="deepconf")
    out = []
    for eta in (10.0, 50.0, 90.0):
        prune = GroupThresholdPrune(eta)
        for w in (4, 8, 16):
            out.append(_with(base, f"η={eta:g}, W={w}", warmup=FixedWarmup(w), filter=prune))
        for w in (8, 16):  # an adaptive warm-up of 4 from the 4th is the fixed one
            warm = AdaptiveWarmup(w, 4)
            out.append(_with(base, f"η={eta:g}, W={w} adaptive", warmup=warm, filter=prune))
    return out


SWEEPS: dict[str, Callable[[], list[Policy]]] = {
    "tau": _sweep_tau,
    "esc": _sweep_esc,
    "beta": _sweep_beta,
    "dirichlet": _sweep_dirichlet,
    "beta-z": _sweep_beta_z,
    "deepconf": _sweep_deepconf,
}


def default_policies(*, answer_only: bool, warmup: int = 16, tau: float = 0.95) -> list[Policy]:
    """Every named policy that applies: on answer-only samples, those needing no confidence."""
    policies = [named_policy(n, warmup=warmup, tau=tau) for n in POLICY_NAMES]
    return [p for p in policies if not (answer_only and p.needs_confidence)]


def sweep_policies(names: Sequence[str], *, answer_only: bool) -> list[Policy]:
    out: list[Policy] = []
    for name in names:
        if name not in SWEEPS:
            raise ConfigError(f"unknown sweep {name!r}: use one of {', '.join(SWEEPS)}")
        out += [p for p in SWEEPS[name]() if not (answer_only and p.needs_confidence)]
    if answer_only and names and not out:
        raise ConfigError("the sweeps given all need confidences, which samples do not have")
    return out


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One policy's expectation over the problems and orders."""

    policy: str
    accuracy: float  # mean over orders of the per-order accuracy over problems
    low: float  # 2.5th percentile of the per-order accuracies
    high: float  # 97.5th percentile
    tokens: float  # mean tokens per problem
    traces: float  # mean traces launched per problem
    delta_tokens: float | None  # tokens / majority@N's - 1 (None without a majority row)
    problems: int
    orders: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_policies(
    pools: dict[str, Pool],
    golds: dict[str, str],
    policies: Sequence[Policy],
    *,
    budget: int,
    repeats: int = 64,
    seed: int = 0,
    token_budget: int | None = None,
    window: int | None = None,
    grader: Grader | None = None,
) -> list[PolicyRow]:
    """Each policy over the same `repeats` random orders of every pool (budget capped at
    each pool's size). Problems without a gold answer are an error."""
    missing = sorted(set(pools) - set(golds))
    if missing:
        raise ConfigError(f"no gold answer for {len(missing)} problem(s), e.g. {missing[0]!r}")
    if repeats < 1:
        raise ConfigError(f"need at least one order, got {repeats}")
    grades = _Grades(grader)
    rng = np.random.default_rng(seed)
    n_pol = len(policies)
    correct = np.zeros((n_pol, repeats))  # (policies, orders) problems right
    tokens = np.zeros((n_pol, repeats))
    traces = np.zeros((n_pol, repeats))
    for pid, pool in pools.items():
        prepared = pool.prepared(window)
        k = int(pool.meta.get("k") or 20)
        for r in range(repeats):
            order = rng.permutation(len(pool)).tolist()
            for j, policy in enumerate(policies):
                b = min(budget, len(pool))
                out = simulate_policy(prepared, order, policy, b, token_budget, k)
                correct[j, r] += grades(out.answer, golds[pid]).correct
                tokens[j, r] += out.tokens
                traces[j, r] += out.traces
    n = len(pools)
    names = [p.name for p in policies]
    base = float(tokens[names.index("majority")].mean()) / n if "majority" in names else None
    rows = []
    for j, name in enumerate(names):
        acc = correct[j] / n  # (orders,)
        t = float(tokens[j].mean()) / n
        rows.append(
            PolicyRow(
                name,
                float(acc.mean()),
                float(np.percentile(acc, 2.5)),
                float(np.percentile(acc, 97.5)),
                t,
                float(traces[j].mean()) / n,
                t / base - 1 if base else None,
                n,
                repeats,
            )
        )
    return rows


def comparison_markdown(rows: Sequence[PolicyRow], budget: int) -> str:
    """The table as Markdown, policies in the order given."""
    lines = [
        "| policy | accuracy | 95% of orders | tokens/problem | traces"
        f" | Δ tokens vs majority@{budget} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "—" if r.delta_tokens is None else f"{r.delta_tokens:+.1%}"
        lines.append(
            f"| {r.policy} | {r.accuracy:.2%} | {r.low:.2%}–{r.high:.2%} | {r.tokens:,.0f} |"
            f" {r.traces:.1f} | {delta} |"
        )
    return "\n".join(lines)


def pareto_front(rows: Sequence[PolicyRow]) -> list[PolicyRow]:
    """The policies no other beats on both axes (at most the tokens and at least the
    accuracy, better on one), cheapest first: the accuracy-tokens trade-off worth choosing
    from. A sweep over the sorted rows keeps each that is more accurate than all cheaper."""
    front: list[PolicyRow] = []
    for r in sorted(rows, key=lambda r: (r.tokens, -r.accuracy)):
        if not front or r.accuracy > front[-1].accuracy:
            front.append(r)
    return front
