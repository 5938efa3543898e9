"""Adaptive-Consistency's posterior probabilities: the fast Dirichlet form agrees with its
exact rational integral and with the density summed on the simplex, reduces to the Beta form
for two answers, and its stop rule decides as BetaPosterior while two answers are seen."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.errors import ConfigError
from deepconf.policies.posterior import (
    _gamma_race,
    beta_leader_probability,
    dirichlet_leader_probability,
    exact_dirichlet_leader_probability,
    reference_dirichlet_grid,
)
from deepconf.policies.stop import BetaPosterior, DirichletPosterior
from deepconf.policies.votes import VoteState

counts_strategy = st.lists(st.integers(0, 14), min_size=1, max_size=6)


@settings(max_examples=120, deadline=None)
@given(counts_strategy)
def test_fast_dirichlet_matches_the_exact_integral(counts: list[int]) -> None:
    """The quadrature equals the Gamma race integrated in exact rationals to 1e-12: the
    fixed 128-node rule is accurate over the counts a vote produces (measured worst ~1e-14)."""
    exact = float(exact_dirichlet_leader_probability(counts))
    assert math.isclose(dirichlet_leader_probability(counts), exact, rel_tol=0, abs_tol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=3, max_size=3))
def test_exact_dirichlet_is_the_density_summed_on_the_simplex(counts: list[int]) -> None:
    """The Gamma-race identity behind both fast and exact forms, checked against the
    definition: the Dirichlet density summed over a 1000 x 1000 grid on the simplex where the
    leader's share is largest (grid error about 1e-6, measured; the bar leaves 10x room)."""
    leader_first = sorted(counts, reverse=True)
    exact = float(exact_dirichlet_leader_probability(leader_first))
    assert math.isclose(reference_dirichlet_grid(leader_first), exact, rel_tol=0, abs_tol=1e-5)


@pytest.mark.parametrize(
    ("counts", "exact"),
    [
        # equal counts: by symmetry each answer is the mode with probability 1/m
        ([0, 0, 0], Fraction(1, 3)),
        ([1, 1, 1], Fraction(1, 3)),
        ([2, 2, 2, 2], Fraction(1, 4)),
        # by hand: int x e^-x (1 - e^-x)^2 dx = 1 - 2/4 + 1/9
        ([1, 0, 0], Fraction(11, 18)),
    ],
)
def test_exact_dirichlet_at_known_points(counts: list[int], exact: Fraction) -> None:
    """Values fixed by symmetry or worked by hand; the rational integral hits them exactly
    and the quadrature to float precision."""
    assert exact_dirichlet_leader_probability(counts) == exact
    assert math.isclose(dirichlet_leader_probability(counts), float(exact), abs_tol=1e-14)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), st.integers(0, 400))
def test_two_answers_are_the_beta_form(a: int, b: int) -> None:
    """For two answers the Dirichlet form is the Beta form: the public function returns the
    exact binomial tail, and the general Gamma race, evaluated on the same two counts without
    that shortcut, agrees with it to 1e-12 (so the shortcut is not a different rule)."""
    v1, v2 = max(a, b), min(a, b)
    beta = beta_leader_probability(v1, v2)
    assert dirichlet_leader_probability([a, b]) == beta
    assert math.isclose(_gamma_race(v1, [v2]), beta, rel_tol=0, abs_tol=1e-12)


def test_one_answer_seen_stands_in_an_unseen_runner_up() -> None:
    """With a single answer the Dirichlet is degenerate; as the paper's code does, a
    runner-up with no votes stands in: Beta(v + 1, 1), P = 1 - 2^-(v + 1)."""
    for v in range(6):
        assert dirichlet_leader_probability([v]) == 1 - 2.0 ** -(v + 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=3, max_size=12))
def test_dirichlet_is_never_above_the_beta_form(counts: list[int]) -> None:
    """p1/(p1 + p2) is Beta(v1 + 1, v2 + 1) under the Dirichlet and {p1 beats all} lies in
    {p1 beats p2}: the general form never claims more certainty than the top two give."""
    top = sorted(counts, reverse=True)
    assert dirichlet_leader_probability(counts) <= beta_leader_probability(top[0], top[1]) + 1e-13


@pytest.mark.parametrize(
    "counts", [[300, 290, 280], [200, 30, 20, 10, 5, 1, 1], [40, 39, 1, 1, 1, 1, 1, 1]]
)
def test_budget_sized_counts_match_the_exact_integral(counts: list[int]) -> None:
    """Counts a 512-trace budget reaches, where the leader's Gamma mass is far from 0."""
    exact = float(exact_dirichlet_leader_probability(counts))
    assert math.isclose(dirichlet_leader_probability(counts), exact, rel_tol=0, abs_tol=1e-12)


def test_the_same_votes_give_the_same_float_in_any_order() -> None:
    """No randomness and no order dependence: live and replay count the same votes in the
    same order, but a rule must not depend on how the rows happen to be listed either."""
    counts = [7, 3, 3, 2, 1]
    first = dirichlet_leader_probability(counts)
    assert all(dirichlet_leader_probability(list(reversed(counts))) == first for _ in range(3))


def _state(sequence: str) -> VoteState:
    state = VoteState()
    for key in sequence:
        state.add(key, 1.0, key)
    return state


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("ab"), max_size=40), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_with_two_answers_the_rules_stop_alike(keys: list[str], confidence: float) -> None:
    """While at most two answers are seen DirichletPosterior stops at exactly the votes
    BetaPosterior stops at, for any confidence and minimum."""
    beta, dirichlet = BetaPosterior(confidence, 4), DirichletPosterior(confidence, 4)
    state = VoteState()
    for key in keys:
        state.add(key, 1.0, key)
        assert dirichlet.should_stop(state) == beta.should_stop(state)


def test_a_third_answer_delays_the_stop() -> None:
    """Six votes 7, one 3, one 5: the Beta form sees 6 to 1, Beta(7, 2), P = 247/256 =
    0.965, and stops at 0.95; the Dirichlet form also weighs the 5, P = 2355973/2519424 =
    0.935, and waits for more votes."""
    spread = _state("7737777" + "5")
    assert beta_leader_probability(6, 1) == 247 / 256
    assert exact_dirichlet_leader_probability([6, 1, 1]) == Fraction(2355973, 2519424)
    assert dirichlet_leader_probability([6, 1, 1]) == pytest.approx(2355973 / 2519424, abs=1e-13)
    assert BetaPosterior(0.95, 4).should_stop(spread)
    assert not DirichletPosterior(0.95, 4).should_stop(spread)
    spread.add("7", 1.0, "7")  # 7 to 1 to 1: P = 0.963, the Dirichlet stops too
    assert dirichlet_leader_probability([7, 1, 1]) == pytest.approx(2426513 / 2519424, abs=1e-13)
    assert DirichletPosterior(0.95, 4).should_stop(spread)


@pytest.mark.parametrize("confidence", [0.5, 1.0, 0.3])
def test_out_of_range_confidence_is_a_config_error(confidence: float) -> None:
    with pytest.raises(ConfigError, match=r"posterior confidence must be in \(0.5, 1\)"):
        DirichletPosterior(confidence)


@pytest.mark.parametrize("counts", [[], [-1, 2], [1.5, 2]])
def test_counts_must_be_whole_and_present(counts: list[float]) -> None:
    with pytest.raises(ValueError, match=r"no votes|whole numbers"):
        dirichlet_leader_probability(counts)  # type: ignore[arg-type]
