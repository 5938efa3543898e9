"""Answer extraction and equivalence classes (deepconf.answers, re-exported by deepconf.voting)."""

from __future__ import annotations

import re
import threading
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf import answers as answers_module
from deepconf.answers import AnswerKeys, extract_answer, normalise_answer, too_costly
from deepconf.config import AnswerConfig


@pytest.fixture(autouse=True, scope="module")
def unhurried_math_verify():  # type: ignore[no-untyped-def]
    """These tests check what math-verify decides, not its deadline (test_answer_limits.py
    does): each new answer gets 30 s, which a loaded machine does not run out of. With the
    0.25 s of a real vote, {1,2} against \\{2,1\\} timed out once under seven processes on
    two cores and compared as strings."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(answers_module, "ANSWER_SECONDS", 30.0)
        yield


# ---------------------------------------------------------------------------------------------
# Extraction


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}} and more", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"first \boxed{1} then \boxed{2} finally \boxed{3}", "3"),
        (r"\fbox{7}", "7"),
        (r"$\boxed{ $-3$ }$", "-3"),  # $ and whitespace around the argument are stripped
        (r"\boxed 5. Done.", "5"),
        (r"\boxed {12}", "12"),
        (r"\boxed{2} then a truncated \boxed{3", "2"),  # unclosed last box: the previous one
        (r"\boxed{9} then an empty \boxed{ }", "9"),  # an empty last box is skipped too
        ("no box here, and no answer phrase", None),
        ("", None),
    ],
)
def test_boxed_extraction(text: str, want: str | None) -> None:
    """The last box with a non-empty, closed argument wins; nested braces are matched."""
    assert extract_answer(text) == want


def test_boxed_beats_later_answer_phrase() -> None:
    """A box anywhere wins over phrases, even ones that come after it."""
    assert extract_answer(r"\boxed{4} ... The answer is 5.") == "4"


def test_boxed_command_needs_a_word_boundary() -> None:
    r"""\boxedthing{3} is some other command, not a box."""
    assert extract_answer(r"\boxedthing{3}", AnswerConfig(fallbacks=False)) is None


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Answer: 42", "42"),
        ("Answer:42", "42"),
        ("Answer: 8. Why the answer isn't 9 is left out.", "8"),  # "isn't" is not "is"
        ("**Answer:** $7$", "7"),
        ("So the final answer is 1/2.", "1/2"),
        ("The answer is 3.5.", "3.5"),  # only the trailing period goes
        ("the answer is 2.\nLater: the answer is 6.", "6"),  # last occurrence
        ("Answer:\n  19\n", "19"),  # value on the next line
        (r"The answer is \(x+1\).", "x+1"),
    ],
)
def test_fallback_phrases(text: str, want: str) -> None:
    """Without a box, the last answer phrase gives the rest of its line, trimmed."""
    assert extract_answer(text) == want
    assert extract_answer(text, AnswerConfig(fallbacks=False)) is None


def test_user_patterns_group_one_and_last_match() -> None:
    """User regexes run after the fallbacks; the last match's group 1 is the answer, and a
    pattern without a group gives its whole match."""
    cfg = AnswerConfig(fallbacks=False, patterns=[r"####\s*(\S+)"])
    assert extract_answer("#### 3\nthen #### 8", cfg) == "8"
    assert extract_answer("nothing", cfg) is None
    whole = AnswerConfig(fallbacks=False, patterns=[r"\d+ apples"])
    assert extract_answer("3 apples or 5 apples", whole) == "5 apples"
    # Order: fallbacks first, then patterns, then the next pattern.
    both = AnswerConfig(patterns=[r"=>\s*(\d+)", r"#(\d+)"])
    assert extract_answer("=> 1 and Answer: 2", both) == "2"
    assert extract_answer("#4 and => 1", both) == "1"
    assert extract_answer("#4", both) == "4"


def test_invalid_user_pattern_is_refused_by_config() -> None:
    """A bad regex fails when the config is built, with the pattern in the message."""
    with pytest.raises(ValueError, match="not a valid regex"):
        AnswerConfig(patterns=["(unclosed"])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (r"\boxed{(B)}", "B"),
        (r"\boxed{\text{C}}", "C"),
        (r"\boxed{d}", "D"),  # a boxed letter is matched case-insensitively
        ("The answer is B.", "B"),
        ("**Answer:** (A) 42", "A"),
        ("(A) is wrong, so (C) is it", "C"),  # last standalone "(X)"
        ("Option B) fits best", "B"),
        (r"\boxed{42}", "42"),  # not a letter: returned as found
        ("no letter at all", None),
        ("a) and b) are enumerations", None),  # lower case is not searched in free text
    ],
)
def test_choice_letters(text: str, want: str | None) -> None:
    """With choices set, answers normalise to a choice letter, searched in the text if no box
    or phrase gives one."""
    assert extract_answer(text, AnswerConfig(choices="ABCD")) == want


def test_choice_phrase_without_fallbacks() -> None:
    """'answer is B' still yields B under choices when generic fallbacks are off, and a
    phrase beats a later standalone '(X)'."""
    cfg = AnswerConfig(choices="ABCD", fallbacks=False)
    assert extract_answer("I think the answer is B, not (C)", cfg) == "B"
    assert extract_answer("The answer is 5", cfg) is None


def test_extraction_runs_over_the_full_text() -> None:
    """Thinking and answer are one text: a box deep inside a long trace is found."""
    text = "x" * 200_000 + r" \boxed{17} " + "y" * 50_000
    assert extract_answer(text) == "17"


# ---------------------------------------------------------------------------------------------
# Equivalence


def test_equivalent_forms_share_one_key() -> None:
    """0.5, 1/2, \\frac{1}{2}, \\dfrac12 and '$ 1/2 $.' are one class named by the first."""
    keys = AnswerKeys()
    forms = ["0.5", "1/2", r"\frac{1}{2}", r"\dfrac{1}{2}", "$ 1/2 $."]
    assert [keys.key(f) for f in forms] == ["0.5"] * len(forms)
    assert keys.key("2") == "2"
    assert keys.key("3") == "3"
    assert len(keys) == 3


def test_normalisation_short_circuits() -> None:
    """Trivial variants are equal before any parsing: spaces, $, \\text, \\left/\\right,
    trailing period, an x = prefix."""
    norm = [normalise_answer(s)[0] for s in ["x = 12", "$12$", r"\text{12}.", " 12 "]]
    assert norm == ["12"] * 4
    assert normalise_answer(r"\left(1, 2\right)")[0] == "(1,2)"
    assert normalise_answer("a=1, b=2")[0] == "a=1,b=2"  # two '=': not a single-variable prefix


def test_sets_as_math_verify_decides() -> None:
    """{1,2} and \\{2,1\\} are one set; the ordered pair (1,2) is not (2,1)."""
    keys = AnswerKeys()
    assert keys.key("{1,2}") == keys.key(r"\{2,1\}")
    assert keys.key("(2,1)") != keys.key("(1,3)")


def test_words_compare_as_strings() -> None:
    """Word answers are not products of symbols: 'hello' != 'olleh', but case is folded."""
    keys = AnswerKeys()
    assert keys.key("hello") != keys.key("olleh")
    assert keys.key("Yes") == keys.key("yes") == "Yes"
    assert keys.key(r"\sqrt{2}") == keys.key("sqrt(2)")  # function names are maths, not words


def test_first_seen_class_wins_and_classes_never_merge() -> None:
    """verify is not transitive (5 = 5% and 5% = 0.05, but 5 != 0.05): the order answers arrive
    in decides which class 5% joins, and it never bridges two classes."""
    a = AnswerKeys()
    assert [a.key(s) for s in ["5", r"5\%", "0.05"]] == ["5", "5", "0.05"]
    b = AnswerKeys()
    assert [b.key(s) for s in ["0.05", r"5\%", "5"]] == ["0.05", "0.05", "5"]


class CountingKeys(AnswerKeys):
    """AnswerKeys that counts how often it classifies a raw string and parses symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.classified: list[str] = []
        self.symbolic: list[str] = []

    def _classify(self, raw: str) -> str:
        self.classified.append(raw)
        return super()._classify(raw)

    def _symbolic(self, norm: str):  # type: ignore[no-untyped-def]
        self.symbolic.append(norm)
        return super()._symbolic(norm)


def test_keys_are_cached_by_raw_string() -> None:
    """A repeated raw answer costs a dict lookup: 2,000 repeats classify (and parse) once."""
    keys = CountingKeys()
    first = keys.key(r"\frac{3}{7}")
    assert all(keys.key(r"\frac{3}{7}") == first for _ in range(2000))
    assert keys.classified == [r"\frac{3}{7}"] and len(keys.symbolic) == 1


def test_keys_work_off_the_main_thread() -> None:
    """math-verify's default timeouts use signal.alarm, which fails off the main thread; our
    keys must still group equivalent answers from a worker thread (as an executor would)."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            keys = AnswerKeys()
            results.append([keys.key(s) for s in ["0.25", "1/4", r"\frac{1}{4}", "7"]])
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=30)
    assert not errors
    assert results == [["0.25", "0.25", "0.25", "7"]]


@pytest.mark.parametrize(
    "explosive",
    [r"2^{2^{100}}", r"10^{10^{10}}", r"(x+1)^{1000}", r"\binom{1000000}{500000}", "100000!"],
)
def test_explosive_answers_are_bounded(explosive: str) -> None:
    """Answers sympy would hang on (measured: 2^{2^{100}} vs 3 never returns) skip the symbolic
    step: keying one against a parsed class never hands it to sympy (a hang would fail at the
    join's 60 s rather than stall the suite)."""
    assert too_costly(normalise_answer(explosive)[0])
    done: list[str] = []

    keys = CountingKeys()

    def work() -> None:
        keys.key("3/4")  # parsed (a plain integer would not be, until compared)
        done.append(keys.key(explosive))

    t = threading.Thread(target=work, daemon=True)  # daemon: a regression must not hang pytest
    t.start()
    t.join(timeout=60)
    assert done == [explosive]
    assert keys.symbolic == ["3/4"]  # the explosive answer never reached sympy


@pytest.mark.parametrize("benign", ["2^{10}", "x^2+1", "5!", r"\binom{10}{3}", r"\sqrt[3]{2}"])
def test_benign_answers_still_parse(benign: str) -> None:
    """The cost guard does not turn ordinary answers into plain strings."""
    assert not too_costly(normalise_answer(benign)[0])


def test_long_answers_compare_as_strings() -> None:
    """Past 200 characters answers skip math-verify but equal strings still group."""
    long = "+".join(["1"] * 150)
    keys = AnswerKeys()
    assert too_costly(long)
    assert keys.key(long) == keys.key(f" {long} ") == long
    assert keys.key("150") != long  # would be equal symbolically; bounded work says no


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["1", "2", "0.5", "1/2", "3", "x", "yes"]), max_size=12))
def test_key_is_idempotent_and_order_stable(answers: list[str]) -> None:
    """A key is always one of the raw strings seen, keying a key gives itself, and asking
    again gives the same answer."""
    keys = AnswerKeys()
    first = [keys.key(a) for a in answers]
    assert all(k in answers for k in first)
    assert [keys.key(k) for k in first] == first
    assert [keys.key(a) for a in answers] == first


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *["17", "42", "0", "-3", "007", "17.0", r"\frac{84}{2}", "x", "-0", "3", "1/2"],
                *["123456789012345", "123456789012346", "100000000000000000"],
            ]
        ),
        max_size=10,
    )
)
def test_plain_integers_are_keyed_as_math_verify_keys_them(answers: list[str]) -> None:
    """The plain-integer path (no math-verify while every class is a plain integer; an
    integer class parsed once another form must be compared with it) gives exactly the keys
    of the path that parses every answer."""
    with mock.patch.object(answers_module, "_PLAIN_INTEGER", re.compile(r"(?!)")):
        reference = AnswerKeys()
        want = [reference.key(a) for a in answers]
    keys = AnswerKeys()
    assert [keys.key(a) for a in answers] == want


def test_a_vote_of_plain_integers_never_calls_math_verify() -> None:
    keys = CountingKeys()
    said = ["42", "17", "42", " 17 ", "x = 42"]
    assert [keys.key(a) for a in said] == ["42", "17", "42", "17", "42"]
    assert keys.symbolic == []
    assert keys.key(r"\frac{34}{2}") == "17"  # then the integers are parsed, once
    assert keys.symbolic == [r"\frac{34}{2}"]
