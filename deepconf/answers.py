"""Final answers: finding one in a trace's text, and deciding when two are the same answer.

Extraction takes the last ``\\boxed{...}`` (the DeepConf reference does the same), then falls
back to phrases ("Answer: X", "the answer is X"), user regexes and multiple-choice letters.
Equivalence groups answers by mathematical value with math-verify, so ``0.5``, ``1/2`` and
``\\frac{1}{2}`` are one vote (the reference keys on raw strings: its open issue #15).
Pure, no I/O; it does not grade against a ground truth (eval/ does).

Everything here runs on the caller's thread, often the event loop, on text a model wrote
(and, through `deepconf serve`, patterns a client sent), so every step is bounded: box
matching is linear, user patterns run with a time limit (a pattern that exceeds it is a
ConfigError, not a frozen server), and math-verify runs under a deadline per answer and a
time budget per AnswerKeys (deepconf.deadline), past which answers compare as strings.

    extract_answer("... so \\boxed{\\frac{1}{2}}.")     # -> "\\frac{1}{2}"
    keys = AnswerKeys()
    keys.key("1/2"); keys.key("0.5")                   # -> "1/2" both times
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from deepconf.config import AnswerConfig
from deepconf.deadline import run_within
from deepconf.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Extraction

# (?![A-Za-z]) so that a longer command such as \boxedthing is not taken for \boxed.
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The brace-less form "\boxed 5": one run of non-space, non-$ characters.
_BARE_ARG = re.compile(r"[^\s$]+")
_PHRASE = re.compile(r"\b(?:(?:final\s+)?answer\s+is(?![\w'’])|answer\s*:)", re.IGNORECASE)
# Decimal points survive: only a period at the very end (or before whitespace) is dropped.
_TRAILING = " \t\r\n*$.,;:"
# Braces and escapes, for matching braces in one pass: "\\" takes the next character with it.
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)
# One user pattern's whole search of one trace's text. Linear patterns take microseconds on a
# long trace; one that backtracks exponentially (the `regex` engine already defuses the
# common nested-repeat forms; a repeat of a backreference still explodes) meets this limit.
PATTERN_SECONDS = 0.1


def extract_answer(text: str, config: AnswerConfig | None = None) -> str | None:
    """The final answer in a trace's full text (thinking included), or None.

    Order, first hit wins:
      1. the last ``\\boxed{...}`` / ``\\fbox{...}`` with a non-empty argument (nested braces,
         escaped ``\\{ \\}``, and the brace-less ``\\boxed 5`` form); an unclosed box at the
         end of a truncated trace is skipped in favour of the one before it;
      2. when ``config.fallbacks``: the last "final answer is X" / "answer is X" / "Answer: X",
         X running to the end of its sentence or line (the next line if that one is empty);
      3. each of ``config.patterns`` in turn: its last match, group 1 (the whole match for a
         pattern without groups);
      4. when ``config.choices``: a choice letter after "answer is" / "answer:", else the last
         "(B)" or "B)" in the text.
    With ``config.choices`` set, an answer found by 1-3 that spells a choice ("(B)",
    "\\text{B}", "b.") is returned as that letter; any other answer is returned as found.
    Surrounding whitespace and ``$`` are stripped.
    """
    config = config or AnswerConfig()
    answer = _last_boxed(text)
    if answer is None and config.fallbacks:
        answer = _last_phrase(text)
    if answer is None:
        answer = _user_patterns(text, config.patterns)
    if config.choices:
        if answer is None:
            return _choice_in_text(text, config.choices)
        return _as_choice(answer, config.choices) or answer
    return answer


def _last_boxed(text: str) -> str | None:
    boxes = list(_BOX.finditer(text))
    closes: dict[int, int] | None = None  # brace pairs, found once and only if needed
    for m in reversed(boxes):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            if closes is None:
                closes = _closing_braces(text, boxes[0].end())
            end = closes.get(i)
            arg = text[i + 1 : end] if end is not None else None  # unclosed: skip it
        else:
            bare = _BARE_ARG.match(text, i)
            arg = bare.group(0).rstrip(".,;:") if bare else None
        if arg is not None:
            arg = arg.strip().strip("$").strip()
            if arg:
                return arg
    return None


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """Position of each "{" at or after `start` -> position of its "}", for those that close.

    One pass with a stack, so a text of many unclosed boxes costs O(n), not O(n^2) as a
    scan from each box would. A backslash escapes the next character (``\\{`` and ``\\}`` are
    literal braces); `start` is never an escaped position (it follows a box name), so the
    escapes pair up as a scan from the text's start would pair them."""
    closes: dict[int, int] = {}
    opened: list[int] = []
    for m in _BRACE_TOKENS.finditer(text, start):
        ch = m.group()
        if ch == "{":
            opened.append(m.start())
        elif ch == "}" and opened:
            closes[opened.pop()] = m.start()
    return closes


def _last_phrase(text: str) -> str | None:
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip(" \t*:")
    lines = rest.split("\n", 2)
    # "Answer:\n42": the value is on the next line.
    value = lines[0].strip() or (lines[1].strip() if len(lines) > 1 else "")
    # The sentence ends at ". " (a decimal point is never followed by a space).
    value = re.split(r"\.\s", value, maxsplit=1)[0].strip(_TRAILING)
    if value.startswith("\\(") and value.endswith("\\)"):
        value = value[2:-2].strip()
    return value or None


def _user_patterns(text: str, patterns: list[str]) -> str | None:
    for pattern in patterns:
        m = _user_pattern(pattern).last_match(text)
        if m is not None:
            value = (m.group(1) if m.re.groups else m.group(0)) or ""
            value = value.strip().strip("$").strip()
            if value:
                return value
    return None


class _UserPattern:
    """A user's answer pattern, compiled once, searched with a time limit. One that ran out
    of time is refused from then on without searching again: the other traces of that solve
    (and later requests sending it) fail at once instead of each spending the limit."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        import regex  # here, not at start-up: ~20 ms that only a user's pattern needs

        try:
            self.compiled = regex.compile(pattern)
        except regex.error as exc:  # the config's check uses `re`; the two rarely disagree
            raise ConfigError(f"answer pattern {pattern!r} is not a valid regex: {exc}") from exc
        self.too_slow: str | None = None  # why it was refused

    def last_match(self, text: str) -> Any:
        if self.too_slow is not None:
            raise ConfigError(self.too_slow)
        try:
            # concurrent=True releases the GIL while matching; the timeout covers the search.
            matches = self.compiled.finditer(text, concurrent=True, timeout=PATTERN_SECONDS)
            last = collections.deque(matches, maxlen=1)
        except TimeoutError:
            self.too_slow = (
                f"answer pattern {self.pattern!r} took over {PATTERN_SECONDS:g} s on a trace of"
                f" {len(text)} characters: it backtracks (a repeat of a group that can match"
                " in several ways, or of a backreference); write it so each character can be"
                " matched one way only"
            )
            raise ConfigError(self.too_slow) from None
        return last[0] if last else None


@functools.lru_cache(maxsize=256)
def _user_pattern(pattern: str) -> _UserPattern:
    return _UserPattern(pattern)


def _as_choice(answer: str, choices: str) -> str | None:
    """The choice letter `answer` spells ("(B)", "\\text{B}", "**b.**", "B) 42"), else None."""
    s = _strip_text_commands(answer).strip(" \t*$")
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", s) or re.match(r"\(?([A-Za-z])[).:]\s", s)
    if not m:
        return None
    letter = m.group(1)
    for c in choices:
        if c.upper() == letter.upper():
            return c
    return None


def _choice_in_text(text: str, choices: str) -> str | None:
    # Case-sensitive: lower-case "a)" is usually an enumeration in the reasoning, not a choice.
    letters = "[" + "".join(re.escape(c) for c in choices) + "]"
    phrase = re.compile(
        r"(?i:answer\s*(?:is|:))[\s:*$]*(?:\\text\{)?\(?(" + letters + r")(?![A-Za-z])"
    )
    standalone = re.compile(r"\((" + letters + r")\)|(?<![A-Za-z(])(" + letters + r")\)")
    for pattern in (phrase, standalone):
        matches = list(pattern.finditer(text))
        if matches:
            m = matches[-1]
            return next(g for g in m.groups() if g)
    return None


# ---------------------------------------------------------------------------------------------
# Equivalence

# Symbolic comparison only for answers this short: math-verify's cost grows with the input.
# Longer answers are compared as normalised strings.
MAX_SYMBOLIC_CHARS = 200
# math-verify's CPU time per new answer (its parse and its comparisons with every class so
# far), and per AnswerKeys in all (one solve's vote). A typical answer takes ~2 ms; a few short
# ones take seconds (measured: (x+1)^{99}(x-1)^{99} vs 3, 2.2 s), and a vote over many
# distinct answers costs classes x answers comparisons. Past either, answers compare as
# normalised strings, so a vote never holds the thread longer than the budget.
ANSWER_SECONDS = 0.25
SYMBOLIC_BUDGET_SECONDS = 2.0
# Exponents above this, power towers, big factorials and big binomials make sympy evaluate
# huge numbers or expansions: measured here, "2^{2^{100}}" vs "3" hangs, "(x+1)^{300}" takes
# 0.3 s and "\binom{1000000}{500000}" hangs in parse. Such answers skip the symbolic step.
_MAX_EXPONENT = 100
_MAX_FACTORIAL = 1000
# Function names written without a backslash that still mean maths, not words.
_MATH_WORDS = frozenset(
    {
        "sqrt",
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "log",
        "ln",
        "exp",
        "pi",
        "inf",
        "infty",
        "arcsin",
        "arccos",
        "arctan",
        "mod",
        "gcd",
        "lcm",
    }
)


# We disable math-verify's signal.alarm timeouts on purpose (they raise off the main thread)
# and bound the work ourselves; its one-off warning telling us to do so would only confuse
# users, so drop exactly that record.
class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


@dataclass(slots=True)
class _Class:
    key: str  # first-seen raw string: what the vote table shows
    parsed: list[Any] | None  # math-verify's parse, None when compared as a string only
    integer: str | None = None  # an integer class's normal form, parsed only when needed


# Integers written plainly (no sign on 0, no leading zero, at most 15 digits): two of them are
# one answer exactly when they are the same string, as math-verify agrees (the tests check it
# against math-verify), so a vote of such answers alone never needs math-verify at all. Its
# import (sympy) is most of a solve's start-up: ~0.3 s of CPU.
_PLAIN_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,14}")


def is_plain_integer(norm: str) -> bool:
    """Whether a normalised answer is a plainly written integer: two such answers are equal
    exactly when their strings are, with no math-verify (and no sympy import) needed."""
    return _PLAIN_INTEGER.fullmatch(norm) is not None


class AnswerKeys:
    """Groups raw answers into equivalence classes; `key(raw)` names raw's class.

    A class is named by the first raw string seen in it. Each raw string is first normalised
    (whitespace, ``$``, ``\\text{}``, ``\\left``/``\\right``, ``\\dfrac``, a trailing period,
    an ``x =`` prefix); equal normal forms are one class without calling math-verify.
    Otherwise the answer is parsed once and compared with ``verify(representative, answer)``
    against each class in first-seen order; the first match wins, no match opens a class.

    math-verify's ``verify`` is not transitive (it rounds floats, and accepts ``5`` for
    ``5\\%``), so the classes depend on the order answers arrive in: a new answer joins the
    earliest class whose representative it matches, never a later one, and classes never merge.
    Answers that read as words ("yes", "hello") compare as case-folded strings, since
    math-verify would read them as products of symbols ("hello" == "olleh").

    Safe to share between threads (one lock), and usable off the main thread: math-verify
    runs with its signal-based timeouts off, answers it could hang on in C code are never
    parsed, and the rest runs under deadline.run_within: ANSWER_SECONDS per new answer and
    `symbolic_budget` seconds in all. An answer out of time opens its own class and compares
    as a normalised string from then on (`symbolic_timeouts` counts them). `unjudged`
    counts every answer math-verify would have judged but did not (out of time, the budget
    spent, or refused while earlier comparisons past their time still run): the solve
    reports it, since equal values written differently may then count apart.
    """

    def __init__(self, symbolic_budget: float = SYMBOLIC_BUDGET_SECONDS) -> None:
        self._symbolic_left = symbolic_budget
        self.symbolic_timeouts = 0
        self.unjudged = 0
        self._lock = threading.Lock()
        self._classes: list[_Class] = []
        self._by_raw: dict[str, str] = {}
        self._by_norm: dict[str, str] = {}

    def key(self, raw: str) -> str:
        with self._lock:
            key = self._by_raw.get(raw)
            if key is None:
                key = self._classify(raw)
                self._by_raw[raw] = key
            return key

    def __len__(self) -> int:
        """Number of classes seen so far."""
        return len(self._classes)

    def _classify(self, raw: str) -> str:
        norm, is_text = normalise_answer(raw)
        key = self._by_norm.get(norm)
        if key is not None:
            return key
        if is_plain_integer(norm) and all(c.integer for c in self._classes):
            # A new plain integer among plain integers: a class of its own, parsed later
            # only if an answer of another form must be compared with it.
            self._classes.append(_Class(raw, None, norm))
            self._by_norm[norm] = raw
            return raw
        parsed = None
        if not (is_text or too_costly(norm)):
            if self._symbolic_left > 0:
                parsed, key = self._symbolic(norm)
            else:
                self.unjudged += 1
        if key is None:
            key = raw
            self._classes.append(_Class(key, parsed))
        self._by_norm[norm] = key
        return key

    def _symbolic(self, norm: str) -> tuple[list[Any] | None, str | None]:
        """(norm's parse, the key of the first class it equals), within the time left;
        (None, None) when out of time, so it compares as a string from then on."""
        _warm_up()
        limit = min(ANSWER_SECONDS, self._symbolic_left)
        try:
            found, spent = run_within(limit, self._first_equal, norm)
        except TimeoutError:
            self.symbolic_timeouts += 1
            self.unjudged += 1
            self._symbolic_left -= limit
            return None, None
        self._symbolic_left -= spent
        return found

    def _first_equal(self, norm: str) -> tuple[list[Any] | None, str | None]:
        parsed = _parse(norm)
        if parsed is not None:
            for cls in self._classes:
                if cls.integer is not None:
                    cls.parsed, cls.integer = _parse(cls.integer), None  # its turn came
                if cls.parsed is not None and _verify(cls.parsed, parsed):
                    return parsed, cls.key
        return parsed, None


@functools.cache
def _warm_up() -> None:
    """math-verify builds its parsers on first use (measured: 0.18 s, more on a busy
    machine): done once per process, outside any answer's deadline, so the first answer is
    judged like every other."""
    _parse("1")


def _parse(norm: str) -> list[Any] | None:
    from math_verify import parse  # imported on first use: see _PLAIN_INTEGER

    try:
        parsed = parse("$" + norm + "$", parsing_timeout=None)
    except Exception:  # a parser bug must not sink a vote: compare as a string
        return None
    return parsed or None


def _verify(gold: list[Any], target: list[Any]) -> bool:
    from math_verify import verify

    try:
        return bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # as in _parse: unknown counts as "not equal"
        return False


_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\left|\\right|\\[!,;: ]|~|\\displaystyle")
_VAR_PREFIX = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?=")


def _strip_text_commands(s: str) -> str:
    prev = None
    while prev != s:  # nested \text{\textbf{x}} unwraps one level per pass
        prev, s = s, _TEXT_CMD.sub(r"\1", s)
    return s


def normalise_answer(raw: str) -> tuple[str, bool]:
    """(normal form, reads-as-words) of a raw answer; see AnswerKeys for the rules."""
    s = raw.strip()
    if (s[:2], s[-2:]) in (("\\(", "\\)"), ("\\[", "\\]")):
        s = s[2:-2]
    s = _strip_text_commands(s.strip().strip("$"))
    s = _SPACING.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s).rstrip(".").strip("$")
    if s.count("=") == 1 and _VAR_PREFIX.match(s):
        s = s.split("=", 1)[1]
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", s))
    is_text = any(w.lower() not in _MATH_WORDS for w in words)
    return (s.casefold() if is_text else s), is_text


def too_costly(norm: str) -> bool:
    """Whether a normalised answer is too long or too explosive to hand to sympy."""
    if len(norm) > MAX_SYMBOLIC_CHARS:
        return True
    for m in re.finditer(r"\^|\*\*", norm):
        exponent = _exponent_at(norm, m.end())
        if "^" in exponent or "**" in exponent or "!" in exponent:
            return True  # a tower: 2^{2^{100}}
        if any(int(d) > _MAX_EXPONENT for d in re.findall(r"\d+", exponent)):
            return True
    for m in re.finditer(r"(\d*)\s*!", norm):
        if not m.group(1) or int(m.group(1)) > _MAX_FACTORIAL:
            return True  # (5!)! or 100000!
    if re.search(r"binom|choose", norm):
        return any(int(d) > _MAX_FACTORIAL for d in re.findall(r"\d+", norm))
    return False


def _exponent_at(s: str, i: int) -> str:
    """The exponent that starts at s[i]: a braced group, a parenthesised one, or one token."""
    if i < len(s) and s[i] in "{(":
        close = "}" if s[i] == "{" else ")"
        depth = 0
        for j in range(i, len(s)):
            if s[j] == s[i]:
                depth += 1
            elif s[j] == close:
                depth -= 1
                if depth == 0:
                    return s[i + 1 : j]
        return s[i + 1 :]  # unbalanced: treat the rest as the exponent
    m = re.compile(r"-?\d+|\\?[A-Za-z]+|.").match(s, i)
    return m.group(0) if m else ""
