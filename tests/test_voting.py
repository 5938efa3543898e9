"""Votes, the top-eta filter and the offline methods (deepconf.voting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.confidence import TraceMetrics
from deepconf.errors import ConfigError
from deepconf.voting import (
    OFFLINE_METHODS,
    TIE_TOLERANCE,
    AnswerKeys,
    VoteRow,
    VoteTable,
    keep_top,
    method_vote,
    tolerant_threshold,
    vote,
)

FAST = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------------------------------------
# Slow references


def ref_percentile(values: list[float], q: float) -> float:
    """numpy's default 'linear' percentile, by hand: interpolate at rank (n-1)*q/100."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ref_vote(
    answers: list[str | None], weights: list[float] | None
) -> list[tuple[str, int, float]]:
    """Answers here are distinct integers, so each raw string is its own class."""
    tally: dict[str, list[float]] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        first.setdefault(a, i)
        t = tally.setdefault(a, [0, 0.0])
        t[0] += 1
        t[1] += 1.0 if weights is None else weights[i]
    # The stated rule, one pick at a time: the heaviest answer left, where weights within
    # TIE_TOLERANCE of it tie with it; among those, more traces, then first seen.
    order: list[str] = []
    left = set(tally)
    while left:
        heaviest = max(tally[a][1] for a in left)
        tied = [a for a in left if abs(tally[a][1] - heaviest) <= TIE_TOLERANCE * heaviest]
        pick = min(tied, key=lambda a: (-tally[a][0], first[a]))
        order.append(pick)
        left.remove(pick)
    return [(a, int(tally[a][0]), tally[a][1]) for a in order]


def metrics(mean: float, tail: float, bottom: float, lowest: float) -> TraceMetrics:
    return TraceMetrics(mean=mean, tail=tail, bottom=bottom, lowest=lowest)


# ---------------------------------------------------------------------------------------------
# vote and VoteTable


def test_equivalent_answers_are_one_row() -> None:
    """0.5, 1/2 and \\frac{1}{2} are one candidate whose count and weight are summed; 2 and 3
    stay separate."""
    table = vote(["0.5", "2", "1/2", r"\frac{1}{2}", "3"], [1.0, 2.5, 2.0, 0.5, 1.0])
    assert table.rows == [VoteRow("0.5", 3, 3.5), VoteRow("2", 1, 2.5), VoteRow("3", 1, 1.0)]
    assert table.leader == "0.5"
    assert table.beta == pytest.approx(3.5 / 7.0)
    assert table.total_weight == pytest.approx(7.0)


def test_weighted_and_majority_can_disagree() -> None:
    """Two confident traces outweigh three unsure ones: the weighted leader is not the most
    frequent answer."""
    answers = ["7", "7", "7", "9", "9"]
    weights = [1.0, 1.0, 1.0, 5.0, 5.0]
    assert vote(answers).leader == "7"
    assert vote(answers, weights).leader == "9"
    assert vote(answers).beta == pytest.approx(3 / 5)
    assert vote(answers, weights).beta == pytest.approx(10 / 13)


def test_no_answers_gives_an_empty_table() -> None:
    """No votes (or only None answers): no rows, leader None, beta 0, total weight 0."""
    for table in (vote([]), vote([None, None], [3.0, 4.0])):
        assert table.rows == []
        assert table.leader is None
        assert table.beta == 0.0
        assert table.total_weight == 0.0
        assert table.to_dict() == {"leader": None, "beta": 0.0, "total_weight": 0.0, "rows": []}


def test_zero_weights_never_read_as_consensus() -> None:
    """If every weight is 0 the leader still exists but beta is 0, not NaN."""
    table = vote(["1", "2"], [0.0, 0.0])
    assert table.leader == "1"
    assert table.beta == 0.0


def test_ties_break_by_weight_then_count_then_first_seen() -> None:
    """Equal weight: the larger count wins; equal weight and count: the first seen wins,
    whatever the order of the later traces."""
    assert vote(["4", "5", "5"], [2.0, 1.0, 1.0]).leader == "5"  # weight 2 each, count 2 > 1
    assert vote(["4", "5"], [2.0, 2.0]).leader == "4"
    assert vote(["5", "4"], [2.0, 2.0]).leader == "5"
    assert [r.answer for r in vote(["6", "4", "5", "4", "5", "6"]).rows] == ["6", "4", "5"]


@pytest.mark.parametrize("noise", [1e-9, -1e-9, 3e-8, -3e-8])
def test_weights_equal_up_to_float_noise_are_a_tie(noise: float) -> None:
    """Weights that differ by float noise (the engine rounds one window differently in each
    batch: measured up to 3e-8 relative) are equal: the tie goes to the stated rule (more
    traces, then first seen), never to the sign of the noise. The issue's lost votes were
    exact 6-6 ties like this one."""
    w = 15.515
    six_and_six = ["1134"] * 6 + ["1234"] * 6
    weights = [w] * 6 + [w * (1 + noise)] * 6
    assert vote(six_and_six, weights).leader == "1134"  # first seen
    assert vote(six_and_six[::-1], weights[::-1]).leader == "1234"
    # One more trace wins the tie whichever side the noise favours.
    assert vote(["1134"] * 5 + ["1234"] * 6, [w * 6 / 5] * 5 + [w * (1 + noise)] * 6).leader == (
        "1234"
    )


def test_a_real_weight_gap_still_decides() -> None:
    """Only noise ties: weights 1e-5 apart (ten times the tolerance) are ordered by weight,
    even against more traces and first sight."""
    assert vote(["a", "b", "b"], [30.0 * (1 + 1e-5), 15.0, 15.0]).leader == "a"
    assert vote(["a", "b", "b"], [30.0, 15.0, 15.0 * (1 + 2e-5)]).leader == "b"


def test_shared_keys_keep_class_names_across_votes() -> None:
    """With one AnswerKeys per problem, a class keeps its first name in later votes."""
    keys = AnswerKeys()
    vote(["1/2"], keys=keys)
    assert vote(["0.5", "0.5"], keys=keys).leader == "1/2"


def test_bad_weights_are_refused() -> None:
    """A length mismatch, NaN or negative weight is a caller bug, reported with what to do."""
    with pytest.raises(ConfigError, match="one weight per"):
        vote(["1", "2"], [1.0])
    with pytest.raises(ConfigError, match="finite"):
        vote(["1"], [math.nan])
    with pytest.raises(ConfigError, match=">= 0"):
        vote(["1"], [-1.0])


def test_table_to_dict_is_json_shaped() -> None:
    """to_dict carries leader, beta, total weight and rows as plain dicts."""
    d = vote(["1", "1", "2"], [1.0, 2.0, 1.0]).to_dict()
    assert d == {
        "leader": "1",
        "beta": 0.75,
        "total_weight": 4.0,
        "rows": [
            {"answer": "1", "count": 2, "weight": 3.0},
            {"answer": "2", "count": 1, "weight": 1.0},
        ],
    }


@FAST
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from("12345")), st.floats(0.0, 30.0)),
        max_size=30,
    ),
    st.booleans(),
)
def test_vote_matches_reference_tally(
    pairs: list[tuple[str | None, float]], weighted: bool
) -> None:
    """Counts, weights and order equal a plain-loop tally; counts sum to the answered traces;
    beta is the leader's share and lies in [0, 1]."""
    answers = [a for a, _ in pairs]
    weights = [w for _, w in pairs] if weighted else None
    table = vote(answers, weights)
    want = ref_vote(answers, weights)
    assert [(r.answer, r.count) for r in table.rows] == [(a, c) for a, c, _ in want]
    assert [r.weight for r in table.rows] == pytest.approx([w for _, _, w in want])
    assert sum(r.count for r in table.rows) == sum(a is not None for a in answers)
    assert 0.0 <= table.beta <= 1.0
    if want and sum(w for _, _, w in want) > 0:
        assert table.beta == pytest.approx(want[0][2] / sum(w for _, _, w in want))


# Spellings of three values: every spelling of one value must land in one row.
SPELLINGS = {
    "half": ["1/2", "0.5", r"\frac{1}{2}"],
    "three": ["3", "3.0", r"\dfrac{6}{2}"],
    "seven": ["7", r"\text{7}"],
}
CLASS_OF = {spelling: value for value, all_ in SPELLINGS.items() for spelling in all_}


@FAST
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from(sorted(CLASS_OF))), st.floats(0.0, 30.0)),
        max_size=20,
    ),
    st.booleans(),
)
def test_vote_tallies_equivalent_spellings_as_one_answer(
    pairs: list[tuple[str | None, float]], weighted: bool
) -> None:
    """Answers spelt differently but equal (1/2, 0.5, \\frac{1}{2}) are one row, named by the
    first spelling seen, with the counts and weights of the tally by value; the order is the
    stated rule's, as for distinct answers."""
    answers = [a for a, _ in pairs]
    weights = [w for _, w in pairs] if weighted else None
    table = vote(answers, weights)
    by_value = [None if a is None else CLASS_OF[a] for a in answers]
    want = ref_vote(by_value, weights)
    first_spelling = {}
    for a in answers:
        if a is not None:
            first_spelling.setdefault(CLASS_OF[a], a)
    assert [(r.answer, r.count) for r in table.rows] == [(first_spelling[v], c) for v, c, _ in want]
    assert [r.weight for r in table.rows] == pytest.approx([w for _, _, w in want])


# ---------------------------------------------------------------------------------------------
# keep_top


def test_keep_top_eta_10_and_90() -> None:
    """Of 1..10, eta=10 keeps values >= the 90th percentile (9.1): only 10; eta=90 keeps
    values >= the 10th percentile (1.9): 2..10."""
    v = list(range(1, 11))
    assert np.flatnonzero(keep_top(v, 10)).tolist() == [9]
    assert np.flatnonzero(keep_top(v, 90)).tolist() == list(range(1, 10))


def test_keep_top_keeps_all_ties_at_the_threshold() -> None:
    """Ties at the threshold all survive, so more than eta% can be kept (as the reference),
    ties up to float noise included: confidences of one shared window differ in the 8th
    digit, and the percentile lands between them."""
    v = [5.0, 5.0, 5.0, 5.0, 1.0]
    assert keep_top(v, 10).tolist() == [True, True, True, True, False]
    assert keep_top([3.0] * 7, 10).all()
    noisy = [15.5 * (1 + e) for e in (3e-8, -2e-8, 1e-8, -3e-8)] + [12.0]
    assert keep_top(noisy, 10).tolist() == [True, True, True, True, False]
    assert tolerant_threshold(15.0) == pytest.approx(15.0 - 15.0 * TIE_TOLERANCE, rel=1e-15)


def test_keep_top_edges() -> None:
    """Empty input gives an empty mask; bad percents and NaN are refused."""
    assert keep_top([], 10).tolist() == []
    assert keep_top([2.0], 10).tolist() == [True]
    with pytest.raises(ConfigError, match="keep_percent"):
        keep_top([1.0], 0)
    with pytest.raises(ConfigError, match="keep_percent"):
        keep_top([1.0], 150)
    with pytest.raises(ConfigError, match="NaN"):
        keep_top([1.0, math.nan], 10)


@FAST
@given(
    st.lists(st.floats(0.0, 30.0), min_size=1, max_size=40)
    | st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=1, max_size=40),
    st.sampled_from([10.0, 90.0, 25.0, 50.0, 100.0]),
)
def test_keep_top_matches_hand_percentile(values: list[float], eta: float) -> None:
    """The mask is exactly `value >= linear percentile(100 - eta)` computed by hand, less the
    tie tolerance."""
    percentile = ref_percentile(values, 100.0 - eta)
    threshold = percentile - TIE_TOLERANCE * abs(percentile)
    want = [v >= threshold for v in values]
    got = keep_top(values, eta).tolist()
    # Float interpolation may differ in the last ulp; only values within it may disagree.
    for g, w, v in zip(got, want, values, strict=True):
        assert g == w or math.isclose(v, threshold, rel_tol=1e-12)
    assert any(got)  # the maximum always survives


# ---------------------------------------------------------------------------------------------
# method_vote


# Ten traces: answer "A" (here "11") is frequent but unsure; "22" is rare but confident by
# every metric; one trace has no answer and the highest confidence of all.
ANSWERS = ["11"] * 6 + ["22"] * 3 + [None]
METRICS = (
    [metrics(10.0 + i, 9.0 + i, 8.0 + i, 7.0 + i) for i in range(6)]
    + [metrics(30.0, 29.0, 28.0 - i, 27.0) for i in range(3)]
    + [metrics(99.0, 99.0, 99.0, 99.0)]
)


@pytest.mark.parametrize("method", OFFLINE_METHODS)
def test_every_offline_method_against_a_hand_tally(method: str) -> None:
    """Each method equals the hand computation: majority counts, <metric> weights all answered
    traces, <metric>@eta filters the answered traces at the linear percentile then weights."""
    table = method_vote(method, ANSWERS, METRICS, AnswerKeys())
    answered = [(a, m) for a, m in zip(ANSWERS, METRICS, strict=True) if a is not None]
    if method == "majority":
        want = {"11": (6, 6.0), "22": (3, 3.0)}
    else:
        name, _, eta = method.partition("@")
        values = [m.get(name) for _, m in answered]
        threshold = ref_percentile(values, 100 - float(eta)) if eta else -math.inf
        want = {}
        for (a, _), v in zip(answered, values, strict=True):
            if v >= threshold:
                c, w = want.get(a, (0, 0.0))
                want[a] = (c + 1, w + v)
    got = {r.answer: (r.count, r.weight) for r in table.rows}
    assert got.keys() == want.keys()
    for a, (c, w) in want.items():
        assert got[a][0] == c and got[a][1] == pytest.approx(w)
    assert table.leader == max(want, key=lambda a: (want[a][1], want[a][0]))


def test_methods_disagree_as_the_paper_expects() -> None:
    """Majority picks the frequent answer; weighting by confidence and keeping the top 10%
    picks the confident one; the answerless trace never joins the filter's percentile."""
    assert method_vote("majority", ANSWERS, METRICS).leader == "11"
    assert method_vote("tail@10", ANSWERS, METRICS).leader == "22"
    assert method_vote("lowest", ANSWERS, METRICS).leader == "22"  # 3 x 27 > 7 + ... + 12
    # Had the None trace (99) counted in the percentile, at eta=10 only the 99 would pass
    # and the vote would be empty.
    assert method_vote("lowest@10", ANSWERS, METRICS).rows == [VoteRow("22", 3, 81.0)]


def test_offline_methods_list() -> None:
    """Majority, the four metrics weighted, and each at eta 10 and 90: thirteen methods."""
    assert OFFLINE_METHODS[0] == "majority"
    assert len(OFFLINE_METHODS) == 13 == len(set(OFFLINE_METHODS))
    assert {"tail@10", "lowest@90", "bottom", "mean@10"} <= set(OFFLINE_METHODS)


def test_method_vote_edges() -> None:
    """Unknown methods and length mismatches are refused; no answers is an empty table; a
    trace without metrics counts for majority but cannot be weighed."""
    with pytest.raises(ConfigError, match="unknown voting method"):
        method_vote("tail@50", ["1"], [metrics(1, 1, 1, 1)])
    with pytest.raises(ConfigError, match="one of each"):
        method_vote("majority", ["1", "2"], [metrics(1, 1, 1, 1)])
    for method in OFFLINE_METHODS:
        table = method_vote(method, [None, None], [metrics(1, 1, 1, 1), None])
        assert table == VoteTable([]) and table.leader is None and table.beta == 0.0
    assert method_vote("majority", ["3", "3"], [None, metrics(1, 1, 1, 1)]).rows[0].count == 2
    assert method_vote("mean", ["3", "3"], [None, metrics(2, 1, 1, 1)]).rows == [
        VoteRow("3", 1, 2.0)
    ]


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of deepconf/voting.py that every test above let through.


def test_refusals_say_what_to_do_word_for_word() -> None:
    """The messages are the user's only guide: each is pinned whole."""
    cases = [
        (
            lambda: vote(["1", "2"], [1.0]),
            "vote got 2 answers but 1 weights: pass one weight per answer, or weights=None for"
            " a plain majority",
        ),
        (
            lambda: vote(["1"], [-1.0]),
            "vote weight -1.0 for answer '1' is not a finite number >= 0: weights are trace"
            " confidences; drop traces without a confidence instead",
        ),
        (
            lambda: keep_top([[1.0, 2.0]], 10),
            "keep_top needs a flat sequence of values, got shape (1, 2)",
        ),
        (
            lambda: keep_top([1.0, math.inf], 10),
            "keep_top got a NaN or infinite confidence: drop such traces first",
        ),
        (
            lambda: method_vote("best", ["1"], [None]),
            "unknown voting method 'best': use one of " + ", ".join(OFFLINE_METHODS),
        ),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == message


def test_keep_percent_bounds_are_exactly_zero_exclusive_to_one_hundred() -> None:
    """eta in (0, 100]: a fraction of a percent is a valid eta, anything past 100 is not."""
    assert keep_top([1.0, 2.0], 0.5).tolist() == [False, True]
    assert keep_top([1.0, 2.0], 100).tolist() == [True, True]
    for bad in (0, 100.5, -3):
        with pytest.raises(ConfigError, match=r"keep_percent must be in \(0, 100\]"):
            keep_top([1.0], bad)


def test_an_empty_mask_is_still_a_boolean_mask() -> None:
    """keep_top([]) is a bool array, so `values[mask]` on it selects rather than indexes."""
    mask = keep_top([], 10)
    assert mask.dtype == np.bool_ and mask.shape == (0,)


def test_method_vote_keeps_the_problem_s_class_names() -> None:
    """Every method votes with the AnswerKeys it is given, so a class keeps the name it got
    first in this problem (0.5 seen first: 1/2 votes as 0.5), weighted or not."""
    for method in ("majority", "tail", "tail@10"):
        keys = AnswerKeys()
        keys.key("0.5")
        table = method_vote(method, ["1/2", "1/2"], [metrics(1, 2, 1, 1)] * 2, keys)
        assert [r.answer for r in table.rows] == ["0.5"], method
