"""Adaptive-Consistency's posterior: how sure the votes so far make us that the leading
answer is the true majority (the mode of the model's answer distribution).

Aggarwal, Madaan, Yang and Mausam, "Let's Sample Step by Step: Adaptive-Consistency for
Efficient Reasoning and Coding with LLMs" (EMNLP 2023, arXiv 2305.11860), §2.2: under a
uniform prior, the answer distribution p over the m answers seen has, after counts
v_1 >= v_2 >= ... >= v_m, the posterior Dirichlet(v_1 + 1, ..., v_m + 1); sampling stops once

    P(p_1 > max_{j>1} p_j)                             the Dirichlet form, any m
    P(p_1 > p_2) under Beta(v_1 + 1, v_2 + 1)           the Beta form, the top two only

reaches a confidence (the paper's default: 0.95). Under the Dirichlet, p_1 / (p_1 + p_2) is
Beta(v_1 + 1, v_2 + 1), so the Beta form is P(p_1 > p_2) exactly and the two forms agree for
two answers; with more, {p_1 beats all} lies inside {p_1 beats p_2}, so the Dirichlet form is
never above the Beta one: it waits longer when the votes are spread. With one answer seen the
Dirichlet is degenerate; as the paper's code does, an unseen runner-up with no votes stands
in (Beta(v_1 + 1, 1)).

Both are computed deterministically, because live solves and replay must make the same
stop decision from the same votes (the paper's code integrates the Dirichlet by Monte Carlo
over the top five answers; here every answer seen counts):

    beta_leader_probability(v1, v2)          exact: a binomial tail in integers
    dirichlet_leader_probability(counts)     the Gamma race below, one fixed quadrature rule

The Gamma race: a Dirichlet(a) vector is G / sum(G) for independent G_i ~ Gamma(a_i, 1), so
p_1 is the largest share exactly when G_1 is the largest Gamma:

    P = integral over x > 0 of  g_{a_1}(x) * prod_{j>1} F_{a_j}(x) dx

with g_a, F_a the Gamma(a, 1) density and CDF. For whole a (counts + 1) the CDF is a Poisson
tail, F_a(x) = P(Poisson(x) >= a) = 1 - sum_{k<a} e^-x x^k / k!, so the integrand is
elementary and smooth; a 128-node Gauss-Legendre rule over the leader's Gamma mass (its mean
+- 12 standard deviations + 30) matches the exact value to about 1e-13
(tests/policies/test_posterior.py).

Slow references, compared with the fast forms in the tests:

    reference_beta_leader_probability    the Beta density integrated by the midpoint rule
    exact_dirichlet_leader_probability   the Gamma race integrated in exact rationals
    reference_dirichlet_grid             the Dirichlet density summed over a fine grid on
                                         the simplex (3 answers): the definition itself

    dirichlet_leader_probability([5, 2, 1])   # 0.8179...
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "beta_leader_probability",
    "dirichlet_leader_probability",
    "exact_dirichlet_leader_probability",
    "reference_beta_leader_probability",
    "reference_dirichlet_grid",
]

NODES = 128  # Gauss-Legendre nodes: 64 left errors near 1e-11, 128 about 1e-14 (measured)
SPREAD = 12.0  # the leader's Gamma mass is integrated over mean +- SPREAD sd + MARGIN
MARGIN = 30.0


def beta_leader_probability(leader: int, runner_up: int) -> float:
    """P(p1 > p2) for (p1, p2) = the leader's and runner-up's shares, under Adaptive-
    Consistency's Beta(leader + 1, runner_up + 1) posterior on p1 / (p1 + p2).

    For integer a, b the Beta CDF is a binomial tail, I_x(a, b) = P(Bin(a + b - 1, x) >= a),
    so P(p > 1/2) = P(Bin(a + b - 1, 1/2) <= a - 1): exact integer sums, no special functions.
    """
    a, b = leader + 1, runner_up + 1
    n = a + b - 1
    return sum(math.comb(n, j) for j in range(a)) / 2**n


def reference_beta_leader_probability(leader: float, runner_up: float, steps: int = 20000) -> float:
    """The slow reference: integrate the Beta(leader + 1, runner_up + 1) density over
    (1/2, 1) by the midpoint rule, normalised by its integral over (0, 1)."""
    a, b = leader + 1, runner_up + 1
    h = 1.0 / steps
    above = total = 0.0
    for i in range(steps):
        x = (i + 0.5) * h
        d = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x))
        total += d
        if x > 0.5:
            above += d
    return above / total


def _sorted_counts(counts: Sequence[int]) -> list[int]:
    """The counts, largest first, padded to two answers (an unseen runner-up with none)."""
    if not counts:
        raise ValueError("no votes: there is no leader to be sure of")
    if any(c < 0 or c != int(c) for c in counts):
        raise ValueError(f"vote counts must be whole numbers >= 0, got {list(counts)}")
    ordered = sorted((int(c) for c in counts), reverse=True)
    return ordered if len(ordered) > 1 else [*ordered, 0]


def dirichlet_leader_probability(counts: Sequence[int]) -> float:
    """P(the most-voted answer is the mode of p) under Dirichlet(counts + 1): the Dirichlet
    stop of Adaptive-Consistency (arXiv 2305.11860). `counts` are the plain vote counts of
    every answer seen, in any order.

    With at most two answers this is `beta_leader_probability`, bit for bit (the forms are
    equal there, and the closed form is exact); with more, the Gamma race of the module
    docstring, integrated by one fixed Gauss-Legendre rule: no randomness, so the same votes
    always give the same float."""
    ordered = _sorted_counts(counts)
    if len(ordered) == 2:
        return beta_leader_probability(ordered[0], ordered[1])
    return _gamma_race(ordered[0], ordered[1:])


@functools.cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)  # (n,) nodes on (-1, 1), (n,) weights


def _gamma_race(v1: int, rivals: Sequence[int]) -> float:
    """P(G_1 > every G_j), G_1 ~ Gamma(v1 + 1), G_j ~ Gamma(rival + 1), by quadrature over
    where G_1's density has its mass."""
    mean, sd = v1 + 1.0, math.sqrt(v1 + 1.0)
    lo = max(0.0, mean - SPREAD * sd - MARGIN)
    hi = mean + SPREAD * sd + MARGIN
    t, w = _legendre(NODES)
    x = (hi - lo) / 2 * t + (hi + lo) / 2  # (n,) all > 0: Legendre nodes are interior
    log_x = np.log(x)
    density = np.exp(v1 * log_x - x - math.lgamma(v1 + 1))  # Gamma(v1 + 1) at x, (n,)
    # Poisson(x) terms below kmin are < e^-50 of the mass at every node (x >= lo): leaving
    # them out keeps the work near sqrt(v1) rows instead of v1 for large budgets.
    kmin = max(0, math.floor(lo - 10 * math.sqrt(lo) - 10))
    values, multiplicity = np.unique(np.asarray(rivals, dtype=np.int64), return_counts=True)
    win = np.ones_like(x)  # prod_j F_{a_j}(x), (n,)
    if values[-1] >= kmin:
        k = np.arange(kmin, values[-1] + 1, dtype=np.float64)[:, None]  # (K, 1)
        log_fact = np.array([math.lgamma(i + 1.0) for i in range(kmin, values[-1] + 1)])
        pmf = np.exp(k * log_x - x - log_fact[:, None])  # Poisson(x) at k, (K, n)
        below = np.cumsum(pmf, axis=0)  # P(Poisson(x) <= k), (K, n)
        keep = values >= kmin  # a rival under kmin has F = 1 at every node
        cdf = 1.0 - below[values[keep] - kmin]  # F_{v + 1}(x) = P(Poisson(x) > v), (R, n)
        win = np.prod(cdf ** multiplicity[keep][:, None], axis=0)
    p = math.fsum((hi - lo) / 2 * w * density * win)
    return min(1.0, max(0.0, p))  # the rule's float noise must not leave [0, 1]


def exact_dirichlet_leader_probability(counts: Sequence[int]) -> Fraction:
    """The slow exact reference: the Gamma race integrated in rationals. Expanding
    prod_j (1 - e^-x P_j(x)), P_j(x) = sum_{k<a_j} x^k / k!, gives terms c x^n e^-(r x), and
    each integrates against the leader's density in closed form:

        integral x^(a-1) e^-x / (a-1)! * x^n e^-(r x) dx = (a-1+n)! / ((a-1)! (r+1)^(a+n))

    Cost grows as answers x votes^2: fine for tests, too slow to run after every vote (the
    tests recount every prefix of a vote, so results are memoised by the sorted counts)."""
    return _exact_race(tuple(_sorted_counts(counts)))


@functools.lru_cache(maxsize=4096)
def _exact_race(ordered: tuple[int, ...]) -> Fraction:
    a1 = ordered[0] + 1
    # terms[r][n]: the coefficient of x^n e^-(r x) in the product so far
    terms: list[list[Fraction]] = [[Fraction(1)]]
    for v in ordered[1:]:
        poly = [Fraction(1, math.factorial(k)) for k in range(v + 1)]
        grown: list[list[Fraction]] = [list(row) for row in terms] + [[]]
        for r, row in enumerate(terms):
            target = grown[r + 1]
            target.extend([Fraction(0)] * (len(row) + len(poly) - 1 - len(target)))
            for i, c in enumerate(row):
                for j, q in enumerate(poly):
                    target[i + j] -= c * q
        terms = grown
    total = Fraction(0)
    for r, row in enumerate(terms):
        for n, c in enumerate(row):
            if c:
                rising = Fraction(math.factorial(a1 - 1 + n), math.factorial(a1 - 1))
                total += c * rising / Fraction(r + 1) ** (a1 + n)
    return total


def reference_dirichlet_grid(counts: Sequence[int], steps: int = 1000) -> float:
    """The definition, with no identity in between: the Dirichlet(counts + 1) density of
    three answers, p1^v1 p2^v2 p3^v3 with p3 = 1 - p1 - p2, summed over the midpoints of a
    steps x steps grid on (p1, p2), over the cells where answer 1 has the largest share,
    divided by the sum over the whole simplex. Cells the ties p1 = p2 or the edge p3 = 0 cut
    in half count half, which leaves an error near 1/steps^2 (about 1e-6 at 1000).

    The leader is the first count, whatever the order (it is not sorted here)."""
    if len(counts) != 3:
        raise ValueError(f"the grid reference takes three answers, got {len(counts)}")
    v1, v2, v3 = (float(c) for c in counts)
    i = np.arange(steps)
    i1, i2 = np.meshgrid(i, i, indexing="ij")  # (steps, steps) cell indices
    i3 = steps - 1 - i1 - i2  # p3 at the midpoint is i3 / steps (0: on the edge)
    h = 1.0 / steps
    p1, p2, p3 = (i1 + 0.5) * h, (i2 + 0.5) * h, np.maximum(i3, 0) * h
    with np.errstate(divide="ignore"):
        density = p1**v1 * p2**v2 * p3**v3  # 0**0 = 1: the edge has density when v3 = 0
    inside = np.where(i3 > 0, 1.0, np.where(i3 == 0, 0.5, 0.0))
    # p1 > p3  <=>  i1 + 1/2 > i3, never a tie on whole indices; p1 = p2 on the diagonal
    beats = np.where(i1 > i2, 1.0, np.where(i1 == i2, 0.5, 0.0)) * (2 * i1 + 1 > 2 * i3)
    mass = density * inside
    return float(np.sum(mass * beats) / np.sum(mass))
