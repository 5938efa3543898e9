"""Final answers: finding one in a trace's text, and deciding when two are the same answer.

Extraction takes the last ``\\boxed{...}`` (the DeepConf reference does the same), then falls
back to phrases ("Answer: X", "the answer is X"), user regexes and multiple-choice letters.
Equivalence groups answers by mathematical value with math-verify, so ``0.5``, ``1/2`` and
``\\frac{1}{2}`` are one vote (the reference keys on raw strings: its open issue #15).
Pure, no I/O; it does not grade against a ground truth (eval/ does).

    extract_answer("... so \\boxed{\\frac{1}{2}}.")     # -> "\\frac{1}{2}"
    keys = AnswerKeys()
    keys.key("1/2"); keys.key("0.5")                   # -> "1/2" both times
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from math_verify import parse, verify

from deepconf.config import AnswerConfig

# ---------------------------------------------------------------------------------------------
# Extraction

# (?![A-Za-z]) so that a longer command such as \boxedthing is not taken for \boxed.
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The brace-less form "\boxed 5": one run of non-space, non-$ characters.
_BARE_ARG = re.compile(r"[^\s$]+")
_PHRASE = re.compile(r"\b(?:(?:final\s+)?answer\s+is(?![\w'’])|answer\s*:)", re.IGNORECASE)
# Decimal points survive: only a period at the very end (or before whitespace) is dropped.
_TRAILING = " \t\r\n*$.,;:"


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
    for m in reversed(list(_BOX.finditer(text))):
        arg = _box_argument(text, m.end())
        if arg is not None:
            arg = arg.strip().strip("$").strip()
            if arg:
                return arg
    return None


def _box_argument(text: str, start: int) -> str | None:
    """The argument of a box command whose name ends at `start`; None if unclosed or absent."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            ch = text[j]
            if ch == "\\":
                j += 2  # \{ and \} are literal braces, not grouping
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
        return None
    m = _BARE_ARG.match(text, i)
    return m.group(0).rstrip(".,;:") if m else None


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
        matches = list(re.finditer(pattern, text))
        if matches:
            m = matches[-1]
            value = (m.group(1) if m.re.groups else m.group(0)) or ""
            value = value.strip().strip("$").strip()
            if value:
                return value
    return None


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

# Symbolic comparison only for answers this short: math-verify's cost grows with the input and
# we run it without a timeout (below). Longer answers are compared as normalised strings.
MAX_SYMBOLIC_CHARS = 200
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
    runs with its signal-based timeouts off, and answers it could hang on are never parsed.
    """

    def __init__(self) -> None:
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
        parsed = None if is_text or too_costly(norm) else _parse(norm)
        if parsed is not None:
            for cls in self._classes:
                if cls.parsed is not None and _verify(cls.parsed, parsed):
                    key = cls.key
                    break
        if key is None:
            key = raw
            self._classes.append(_Class(key, parsed))
        self._by_norm[norm] = key
        return key


def _parse(norm: str) -> list[Any] | None:
    try:
        parsed = parse("$" + norm + "$", parsing_timeout=None)
    except Exception:  # a parser bug must not sink a vote: compare as a string
        return None
    return parsed or None


def _verify(gold: list[Any], target: list[Any]) -> bool:
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
