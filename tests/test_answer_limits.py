"""Answer extraction and equivalence stay bounded on hostile input: box matching agrees with a
scan from each box (the slow reference) while doing one pass, user patterns that backtrack
fail with a ConfigError instead of freezing the thread, and math-verify stops at its
deadline and budget."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.deadline_pool import saturated_deadline_pool

from deepconf.answers import AnswerKeys, extract_answer
from deepconf.config import AnswerConfig
from deepconf.errors import ConfigError

# A repeat of a group that can match one or two a's, then a backreference to it: the `regex`
# engine cannot prune this search, which grows exponentially with the run of a's.
BACKTRACKING = r"^((a|aa)+)\1!"
# The pattern the issue froze `deepconf serve` with under Python's `re`; `regex` matches it
# in linear time, so it must keep working.
ISSUE_PATTERN = r"^(?:[\w ,=]|[\w ,=][\w ,=])*!$"


# --- boxes: one pass, same answers as the scan from each box ------------------------------------


def _box_argument_reference(text: str, start: int) -> str | None:
    """The former per-box scan (quadratic over many unclosed boxes), kept as the reference."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            ch = text[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
        return None
    m = re.compile(r"[^\s$]+").match(text, i)
    return m.group(0).rstrip(".,;:") if m else None


def _last_boxed_reference(text: str) -> str | None:
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))):
        arg = _box_argument_reference(text, m.end())
        if arg is not None:
            arg = arg.strip().strip("$").strip()
            if arg:
                return arg
    return None


PIECES = ["\\boxed", "\\fbox", "{", "}", "\\", "\\{", "\\}", " ", "7", "x$"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES)))
def test_box_matching_agrees_with_the_per_box_scan(parts: list[str]) -> None:
    """Any mix of boxes, braces, escapes and blanks: the one-pass brace matching finds the
    same answer as scanning from each box."""
    text = "".join(parts)
    assert extract_answer(text, AnswerConfig(fallbacks=False)) == _last_boxed_reference(text)


def test_many_unclosed_boxes_still_find_the_closed_one() -> None:
    """Thousands of unclosed boxes after a closed one (each a scan to the end before: 10^8
    steps): the closed one is found."""
    text = r"\boxed{42} " + r"\boxed{" * 20_000
    assert extract_answer(text) == "42"


# --- user patterns -----------------------------------------------------------------------------


def test_a_backtracking_pattern_is_a_config_error_naming_it() -> None:
    """A pattern that explodes on a trace's text stops at its time limit with a ConfigError
    that quotes the pattern and says what to change, and it is refused at once afterwards,
    even on text it would match instantly (the solve's other traces must not each pay)."""
    config = AnswerConfig(patterns=[BACKTRACKING], fallbacks=False)
    with pytest.raises(ConfigError) as info:
        extract_answer("a" * 60, config)
    assert repr(BACKTRACKING) in str(info.value) and "backtracks" in str(info.value)
    with pytest.raises(ConfigError):
        extract_answer("", config)


def test_the_issue_pattern_runs_in_linear_time_and_still_matches() -> None:
    """The pattern that froze the server under `re` completes on a 40-token trace (no match)
    and still matches where it should."""
    config = AnswerConfig(patterns=[ISSUE_PATTERN], fallbacks=False)
    assert extract_answer("so x = 7, and y = 8 and the rest " * 4, config) is None
    assert extract_answer("x = 7!", config) == "x = 7!"


def test_patterns_keep_their_group_and_last_match_semantics() -> None:
    """Group 1 of the last match, as before the switch to the `regex` engine."""
    config = AnswerConfig(patterns=[r"RESULT=(\d+)"], fallbacks=False)
    assert extract_answer("RESULT=1 ... RESULT=22", config) == "22"


# --- math-verify -------------------------------------------------------------------------------


def test_a_slow_comparison_stops_at_the_deadline() -> None:
    """Comparing (x+1)^{99}(x-1)^{99} with 3 takes seconds in sympy; it is stopped at the
    per-answer deadline, counted, and the answer gets its own class."""
    keys = AnswerKeys()
    slow = "(x+1)^{99}(x-1)^{99}"
    assert keys.key(slow) == slow
    assert keys.key("3") == "3"
    assert keys.symbolic_timeouts == 1
    assert len(keys) == 2


def test_past_the_budget_answers_compare_as_strings() -> None:
    """With no symbolic time left, 1/2 and 0.5 stay apart (equal only as strings); with the
    default budget they are one answer. So the budget is what bounds a vote's time."""
    spent = AnswerKeys(symbolic_budget=0.0)
    assert spent.key("1/2") != spent.key("0.5")
    assert spent.key("1/2") == spent.key(" 1/2 ")  # normal forms still group
    fresh = AnswerKeys()
    assert fresh.key("1/2") == fresh.key("0.5")


def test_answers_math_verify_did_not_judge_are_counted() -> None:
    """Out of budget, or refused while earlier comparisons past their time still run: each
    answer math-verify would have judged is counted (the solve reports the count); words,
    plain integers among plain integers and answers too costly to parse never are."""
    spent = AnswerKeys(symbolic_budget=0.0)
    for raw in ("7", "8", "1/2", "0.5", "0.5", "yes", "2^{2^{100}}"):
        spent.key(raw)
    assert spent.unjudged == 2  # 1/2 and 0.5, each once
    with saturated_deadline_pool():
        busy = AnswerKeys()
        assert busy.key("1/2") != busy.key("0.5")
    assert (busy.unjudged, busy.symbolic_timeouts) == (2, 2)
    fresh = AnswerKeys()
    assert fresh.key("1/2") == fresh.key("0.5") and fresh.unjudged == 0
