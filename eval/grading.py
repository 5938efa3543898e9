"""Grading predicted answers against gold answers with math-verify.

`0.5`, `\\frac{1}{2}` and `\\boxed{1/2}` all match a gold of `1/2`. When math-verify cannot
parse one side, the grade falls back to a normalised string comparison and is marked
`unparsed`, so the report can count and list it: an unreadable answer is never silently
graded wrong (or right). Two plainly written integers are compared as strings, as the vote
compares them (deepconf/answers.py `is_plain_integer`): an eval whose answers are all such
integers never imports math-verify and sympy, ~0.5 s of CPU in each process (with `--workers
N`, in the parent and every worker). This module does no extraction from trace text: it grades the
answer strings the voting step already extracted.

math-verify's default timeouts use `signal.alarm`, which raises off the main thread; we
pass `parsing_timeout=None` / `timeout_seconds=None` and bound the work ourselves by
refusing to parse answers the voting step deems too costly (long, or huge powers and
factorials).

    grader = Grader()
    g = grader.grade("\\frac{1}{2}", "0.5")     # Grade(correct=True, status="correct")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from deepconf.answers import is_plain_integer, normalise_answer, too_costly

GradeStatus = Literal["correct", "wrong", "no_answer", "unparsed"]


@dataclass(frozen=True, slots=True)
class Grade:
    """correct: whether the prediction matches the gold answer.
    status: correct | wrong | no_answer (the method produced none) | unparsed (math-verify
    could not read one side, so strings were compared); `unparsed_side` says which."""

    correct: bool
    status: GradeStatus
    unparsed_side: str | None = None  # "prediction" | "gold" | "both"


def normalise(answer: str) -> str:
    """The normal form answers are compared by when math-verify is not used: the voting
    step's (whitespace, $, \\text{}, \\left/\\right, a trailing period, an `x =` prefix;
    word answers case-folded)."""
    return normalise_answer(answer)[0]


class Grader:
    """Grades answers; parses are cached by raw string (math-verify takes ~1 ms a parse).

    Equal normal forms are correct without parsing. Answers that read as words ("east",
    "yes") compare as case-folded strings, since math-verify reads them as products of
    symbols ("hello" == "olleh"); that is a real comparison, not an unparsed fallback.
    """

    def __init__(self) -> None:
        self._parsed: dict[str, list[Any]] = {}

    def parsed(self, norm: str) -> list[Any]:
        """math-verify's parse of a normalised answer ([] when it cannot read it, or when
        the answer is too costly to parse without a timeout)."""
        cached = self._parsed.get(norm)
        if cached is not None:
            return cached
        result: list[Any] = []
        if not too_costly(norm):
            from math_verify import parse  # sympy: ~0.5 s of a process's start, paid on use

            # Math mode first: a bare parse reads "2\\sqrt{2}" as 2. The bare string is a
            # second chance. A parse that holds only strings is math-verify giving up.
            for candidate in (f"${norm}$", norm):
                try:
                    result = parse(candidate, parsing_timeout=None)
                except Exception:  # math-verify raises anything sympy raises
                    result = []
                if any(not isinstance(x, str) for x in result):
                    break
                result = []
        self._parsed[norm] = result
        return result

    def grade(self, predicted: str | None, gold: str) -> Grade:
        if predicted is None or not predicted.strip():
            return Grade(False, "no_answer")
        (p_norm, p_text), (g_norm, g_text) = normalise_answer(predicted), normalise_answer(gold)
        if p_norm == g_norm:
            return Grade(True, "correct")
        if p_text or g_text:
            return Grade(False, "wrong")
        if is_plain_integer(p_norm) and is_plain_integer(g_norm):
            return Grade(False, "wrong")  # two plain integers, not the same string
        p, g = self.parsed(p_norm), self.parsed(g_norm)
        if p and g:
            from math_verify import verify

            try:
                ok = bool(verify(g, p, timeout_seconds=None))
            except Exception:  # a sympy failure on a comparison: fall back like a parse failure
                ok = None
            if ok is not None:
                return Grade(ok, "correct" if ok else "wrong")
        side = "both" if not p and not g else ("prediction" if not p else "gold")
        return Grade(False, "unparsed", side or "both")
