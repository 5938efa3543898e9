"""Stop rules: the incremental rule on a VoteState decides as its from-scratch reference at
every prefix of any vote sequence, and the named behaviours hold at their boundaries."""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.errors import ConfigError
from deepconf.policies.posterior import exact_dirichlet_leader_probability
from deepconf.policies.stop import (
    BetaPosterior,
    DirichletPosterior,
    EscWindow,
    NeverStop,
    StopRule,
    TauConsensus,
    WeightedPosterior,
    beta_leader_probability,
    reference_beta_leader_probability,
    reference_should_stop,
)
from deepconf.policies.votes import VoteState
from deepconf.voting import vote

RULES: list[StopRule] = [
    NeverStop(),
    TauConsensus(0.95),
    TauConsensus(0.6),
    EscWindow(1),
    EscWindow(3),
    EscWindow(8),
    BetaPosterior(0.95, 4),
    BetaPosterior(0.8, 1),
    DirichletPosterior(0.95, 4),
    DirichletPosterior(0.8, 1),
    WeightedPosterior(2.0, 4),
    WeightedPosterior(1.0, 1),
]

votes_strategy = st.lists(
    st.tuples(
        st.sampled_from(["7", "3", "11"]),
        st.floats(0.5, 22.0, allow_nan=False).map(lambda w: round(w, 2)),
    ),
    max_size=30,
)


@functools.cache
def _reference_p(v1: int, v2: int) -> float:
    return reference_beta_leader_probability(v1, v2)


def _near_boundary(rule: StopRule, keys: list[str], weights: list[float]) -> bool:
    """Whether the prefix sits within integration error of a posterior rule's bar, where
    the midpoint-rule reference cannot tell the sides apart."""
    if isinstance(rule, BetaPosterior) and keys:
        counts = [*sorted((keys.count(k) for k in set(keys)), reverse=True), 0]
        return abs(_reference_p(counts[0], counts[1]) - rule.confidence) < 1e-6
    if isinstance(rule, DirichletPosterior) and keys:
        # the exact rational reference: only a float-noise tie with the bar is ambiguous
        exact = exact_dirichlet_leader_probability([keys.count(k) for k in set(keys)])
        return abs(float(exact) - rule.confidence) < 1e-12
    return False


@settings(max_examples=150, deadline=None)
@given(votes_strategy)
def test_every_rule_matches_its_reference_at_every_prefix(votes: list[tuple[str, float]]) -> None:
    """Fed one vote at a time, each rule stops exactly where recounting all votes so far
    from scratch (plain loops, deepconf.voting.vote, the integrated Beta density) says so."""
    state = VoteState()
    for n, (key, weight) in enumerate(votes, start=1):
        state.add(key, weight, key)
        keys = [k for k, _ in votes[:n]]
        weights = [w for _, w in votes[:n]]
        for rule in RULES:
            if _near_boundary(rule, keys, weights):
                continue
            assert rule.should_stop(state) == reference_should_stop(rule, keys, weights), (
                rule,
                n,
            )


@settings(max_examples=100, deadline=None)
@given(votes_strategy)
def test_vote_state_matches_the_live_vote_table(votes: list[tuple[str, float]]) -> None:
    """The running state's leader and beta are bit for bit those of deepconf.voting.vote over
    the same votes: the live controller's table and the stop rule never disagree."""
    state = VoteState()
    for key, weight in votes:
        state.add(key, weight, key)
    table = vote([k for k, _ in votes], [w for _, w in votes])
    assert state.leader == table.leader
    assert state.beta == table.beta


@pytest.mark.parametrize("v1,v2", [(0, 0), (1, 0), (3, 0), (4, 1), (7, 2), (12, 9), (30, 1)])
def test_exact_beta_probability_matches_the_integrated_density(v1: int, v2: int) -> None:
    """The binomial-tail closed form equals the numerically integrated Beta posterior."""
    assert math.isclose(
        beta_leader_probability(v1, v2), reference_beta_leader_probability(v1, v2), abs_tol=1e-7
    )


def test_beta_posterior_needs_four_agreeing_votes_at_95_percent() -> None:
    """Beta(v+1, 1): P(p > 1/2) = 1 - 2^-(v+1); 4 unanimous votes give 0.969 >= 0.95 and
    3 give 0.9375 < 0.95, so the rule stops at the 4th agreeing vote and not before."""
    rule = BetaPosterior(0.95, min_votes=1)
    state = VoteState()
    for n in range(1, 5):
        state.add("7", 1.0, "7")
        assert rule.should_stop(state) is (n == 4)


def test_esc_checks_only_whole_windows() -> None:
    """ESC's windows do not overlap: 8 agreeing votes at positions 2..9 do not stop it,
    positions 9..16 do."""
    rule = EscWindow(8)
    state = VoteState()
    state.add("3", 1.0, "3")
    fired = []
    for _ in range(15):
        state.add("7", 1.0, "7")
        fired.append(rule.should_stop(state))
    assert fired.index(True) == 14  # the 16th vote closes the second window


def test_weighted_posterior_with_equal_weights_is_the_count_rule() -> None:
    """With every weight 1 the pseudo-counts are the counts: 4 unanimous votes give
    Beta(5, 1), z = (5/6 - 1/2) / sqrt(5/252) = 2.37 >= 2; 3 give z = 1.94 < 2."""
    rule = WeightedPosterior(2.0, min_votes=1)
    state = VoteState()
    for n in range(1, 5):
        state.add("7", 1.0, "7")
        assert rule.should_stop(state) is (n == 4)


def test_confident_votes_count_more_in_the_weighted_posterior() -> None:
    """Three votes of 7 at confidence 20 against one of 3 at 2 stop a bar the same counts
    with equal weights miss: weight moves evidence toward the confident answer."""
    rule = WeightedPosterior(1.5, min_votes=1)
    weighted, plain = VoteState(), VoteState()
    for key, w in [("7", 20.0), ("3", 2.0), ("7", 20.0), ("7", 20.0)]:
        weighted.add(key, w, key)
        plain.add(key, 1.0, key)
    assert rule.should_stop(weighted) and not rule.should_stop(plain)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TauConsensus(0.0),
        lambda: EscWindow(0),
        lambda: BetaPosterior(0.5),
        lambda: BetaPosterior(1.0),
        lambda: DirichletPosterior(0.5),
    ],
)
def test_out_of_range_settings_are_config_errors(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]
