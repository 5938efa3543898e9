"""A policy in words (what `deepconf solve` prints and records): every named policy's line,
word for word, so a summary never misstates which rules decided; parts built by hand are
named by their `name`."""

from __future__ import annotations

import dataclasses

import pytest

from deepconf.config import POLICY_NAMES
from deepconf.policies import named_policy
from deepconf.policies.describe import describe, describe_line
from deepconf.policies.warmup import AdaptiveWarmup

LINES = {
    "deepconf-low": "deepconf-low (warm-up 16; weighted by lowest-group confidence; prune traces"
    " below the warm-up's top-10% cut; stop at consensus >= 0.95)",
    "deepconf-high": "deepconf-high (warm-up 16; weighted by lowest-group confidence; prune"
    " traces below the warm-up's top-90% cut; stop at consensus >= 0.95)",
    "deepconf-adaptive": "deepconf-adaptive (warm-up up to 16, ending once the stop rule fires"
    " from the 4th; weighted by lowest-group confidence; prune traces below the warm-up's"
    " top-90% cut; stop at consensus >= 0.95)",
    "majority": "majority (warm-up 1; plain count; no filter; no early stop)",
    "tau": "tau (warm-up 16; plain count; no filter; stop at consensus >= 0.95)",
    "esc": "esc (warm-up 1; plain count; no filter; stop when a window of 8 answers agrees)",
    "beta": "beta (warm-up 1; plain count; no filter; stop at Beta P(leader beats runner-up)"
    " >= 0.95 from 4 votes)",
    "dirichlet": "dirichlet (warm-up 1; plain count; no filter; stop at Dirichlet P(leader is"
    " the majority) >= 0.95 from 4 votes)",
    "beta-z": "beta-z (warm-up 1; plain count; no filter; stop at posterior z >= 2 from 4 votes)",
    "conf-beta": "conf-beta (warm-up 1; weighted by lowest-group confidence; no filter; stop at"
    " posterior z >= 2 from 4 votes)",
    "cisc": "cisc (warm-up 16; weighted by softmax(lowest-group confidence / 1); no filter;"
    " stop at consensus >= 0.95)",
    "self-certainty": "self-certainty (warm-up 16; weighted by self-certainty; keep the top 90%"
    " by self-certainty; stop at consensus >= 0.95)",
}


def test_every_named_policy_has_its_line() -> None:
    assert set(LINES) == set(POLICY_NAMES)
    for name in POLICY_NAMES:
        assert describe_line(describe(named_policy(name))) == LINES[name]


def test_the_words_follow_the_settings() -> None:
    """--warmup, --tau and --keep-percent change the words as they change the rules."""
    d = describe(named_policy("deepconf-low", warmup=8, tau=0.9, keep_percent=50))
    assert d == {
        "name": "deepconf (η=50)",
        "warmup": "warm-up 8",
        "vote": "weighted by lowest-group confidence",
        "filter": "prune traces below the warm-up's top-50% cut",
        "stop": "stop at consensus >= 0.9",
    }


@pytest.mark.parametrize(("first", "word"), [(1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th")])
def test_an_adaptive_warmup_counts_in_ordinals(first: int, word: str) -> None:
    policy = dataclasses.replace(
        named_policy("deepconf-adaptive"), warmup=AdaptiveWarmup(16, first)
    )
    assert describe(policy)["warmup"] == (
        f"warm-up up to 16, ending once the stop rule fires from the {word}"
    )


def test_a_part_built_by_hand_is_named_by_its_name() -> None:
    @dataclasses.dataclass(frozen=True)
    class Coin:
        name: str = "coin flip"

        def should_stop(self, state: object) -> bool:
            return False

    policy = dataclasses.replace(named_policy("tau"), stop=Coin())
    assert describe(policy)["stop"] == "coin flip"
