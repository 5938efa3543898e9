"""Grading predicted answers against gold answers with math-verify.

`0.5`, `\\frac{1}{2}` and `\\boxed{1/2}` all match a gold of `1/2`. When math-verify cannot
parse one side, the grade falls back to a normalised string comparison and is marked
`unparsed`, so the report can count and list it: an unreadable answer is never silently
graded wrong (or right). This module does no extraction from trace text: it grades the
answer strings the voting step already extracted.

math-verify's default timeouts use `signal.alarm`, which raises off the main thread; we
pass `parsing_timeout=None` / `timeout_seconds=None` and bound the work ourselves by
refusing to parse strings longer than MAX_PARSE_CHARS.

    grader = Grader()
    g = grader.grade("\\frac{1}{2}", "0.5")     # Grade(correct=True, status="correct")
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from math_verify import parse, verify

GradeStatus = Literal["correct", "wrong", "no_answer", "unparsed"]

# Answers longer than this are not handed to math-verify's sympy parser, whose time is
# unbounded once its timeout is off; they are compared as strings and flagged unparsed.
MAX_PARSE_CHARS = 400

# math-verify logs a warning on every call with timeouts disabled; we disable them on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Grade:
    """correct: whether the prediction matches the gold answer.
    status: correct | wrong | no_answer (the method produced none) | unparsed (math-verify
    could not read one side, so strings were compared); `unparsed_side` says which."""

    correct: bool
    status: GradeStatus
    unparsed_side: str | None = None  # "prediction" | "gold" | "both"


def normalise(answer: str) -> str:
    """The string fallback: drop $, \\text{} wrappers, spaces, a trailing period; lowercase."""
    s = _TEXT.sub(r"\1", answer)
    s = s.replace("$", "").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s.lower()


class Grader:
    """Grades answers; parses are cached by raw string (math-verify takes ~1 ms a parse)."""

    def __init__(self) -> None:
        self._parsed: dict[str, list[Any]] = {}

    def parsed(self, answer: str) -> list[Any]:
        """math-verify's parse of an answer string ([] when it cannot read it)."""
        cached = self._parsed.get(answer)
        if cached is not None:
            return cached
        result: list[Any] = []
        if len(answer) <= MAX_PARSE_CHARS:
            # Math mode first: a bare parse reads "2\\sqrt{2}" as 2. The bare string is a
            # second chance. A parse that holds only strings is math-verify giving up.
            for candidate in (f"${answer}$", answer):
                try:
                    result = parse(candidate, parsing_timeout=None)
                except Exception:  # math-verify raises anything sympy raises
                    result = []
                if any(not isinstance(x, str) for x in result):
                    break
                result = []
        self._parsed[answer] = result
        return result

    def grade(self, predicted: str | None, gold: str) -> Grade:
        if predicted is None or not predicted.strip():
            return Grade(False, "no_answer")
        p, g = self.parsed(predicted), self.parsed(gold)
        if p and g:
            try:
                ok = bool(verify(g, p, timeout_seconds=None))
            except Exception:
                ok = None
            if ok is not None:
                # math-verify can miss plain string identity (e.g. a word answer it parsed
                # oddly); identical normalised strings are always the same answer.
                ok = ok or normalise(predicted) == normalise(gold)
                return Grade(ok, "correct" if ok else "wrong")
        side = "both" if not p and not g else ("prediction" if not p else "gold")
        return Grade(normalise(predicted) == normalise(gold), "unparsed", side)
