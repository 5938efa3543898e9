"""Grading with math-verify: equivalent forms match, unparsable answers are flagged, and
two plain integers are compared without it (and without importing sympy)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.eval.grading import Grader, normalise


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "\\frac{1}{2}"),
        ("140", "140"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("10^{3}", "1000"),
        ("\\text{east}", "east"),
        ("(1,2)", "(1, 2)"),
    ],
)
def test_equivalent_answers_are_correct(pred: str, gold: str) -> None:
    """Mathematically equal answers grade correct, whatever their notation."""
    g = Grader().grade(pred, gold)
    assert g.correct and g.status == "correct"


@pytest.mark.parametrize(("pred", "gold"), [("141", "140"), ("\\frac{1}{3}", "0.5"), ("B", "A")])
def test_different_answers_are_wrong(pred: str, gold: str) -> None:
    """Different values grade wrong (and parsed, so not flagged)."""
    g = Grader().grade(pred, gold)
    assert not g.correct and g.status == "wrong"


def test_missing_answer_is_no_answer() -> None:
    """No answer (None or blank) is wrong with status no_answer."""
    assert Grader().grade(None, "3").status == "no_answer"
    assert Grader().grade("  ", "3").status == "no_answer"


def test_unparsable_answers_fall_back_to_strings_and_are_flagged() -> None:
    """math-verify cannot read 'x^2+': the grade compares normalised strings and says which
    side was unparsed, so the report can list it."""
    g = Grader().grade("x^2+", "3")
    assert (g.correct, g.status, g.unparsed_side) == (False, "unparsed", "prediction")
    g = Grader().grade("x^2-", "x^2+")
    assert (g.correct, g.status, g.unparsed_side) == (False, "unparsed", "both")
    assert Grader().grade("x^2 +", "x^2+").correct  # equal normal forms need no parse
    tower = "2^{2^{100}}"  # too costly to hand to sympy without a timeout
    assert Grader().grade(tower, "1").status == "unparsed"


def test_word_answers_compare_as_words() -> None:
    """math-verify reads "hello" and "olleh" as the same product of symbols; graded as
    words they differ, and case does not matter."""
    assert Grader().grade("olleh", "hello").status == "wrong"
    assert Grader().grade("\\text{East}", "east").status == "correct"


def test_grading_works_off_the_main_thread() -> None:
    """Timeouts are off, so grading in a worker thread does not raise (math-verify's
    default signal-based timeout would)."""
    out = []
    t = threading.Thread(target=lambda: out.append(Grader().grade("\\frac{1}{2}", "0.5")))
    t.start()
    t.join()
    assert out[0].correct


def test_normalise_strips_markup() -> None:
    """The string fallback ignores $, \\text{}, spaces, case and a trailing period."""
    assert normalise("$\\text{East} $.") == "east"


@settings(max_examples=150, deadline=None)
@given(st.integers(-(10**15) + 1, 10**15 - 1), st.integers(-(10**15) + 1, 10**15 - 1))
def test_two_plain_integers_grade_as_math_verify_grades_them(a: int, b: int) -> None:
    """Compared as strings without math-verify, and math-verify agrees on each pair."""
    from math_verify import parse, verify

    g = Grader().grade(str(a), str(b))
    assert g.correct == (a == b) and g.status == ("correct" if a == b else "wrong")
    assert bool(verify(parse(f"${b}$"), parse(f"${a}$"))) == (a == b)


def test_an_eval_of_plain_integers_never_imports_sympy() -> None:
    """A fresh process grades right and wrong integer answers with sympy never loaded."""
    code = (
        "import sys; from deepconf.eval.grading import Grader; g = Grader();"
        " r = [g.grade('42', '42').status, g.grade('17', '42').status];"
        " print(r, 'sympy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "['correct', 'wrong'] False", out.stderr
