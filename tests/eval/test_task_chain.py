"""The chain-arithmetic task family: generation, splits, grading, the family detector."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.errors import ConfigError
from deepconf.eval.task_chain import (
    MAX_DIGITS,
    MAX_STEPS,
    SPLIT_SEEDS,
    Difficulty,
    Problem,
    boxed_answer,
    grade,
    in_family,
    make_problem,
    parse_prompt,
    problems,
    prompt_text,
    split_of_text,
    training_stream,
)


def _eval_chain(expression: str) -> int:
    """Slow reference: left-to-right evaluation of a +/- chain from its text."""
    tokens = re.findall(r"[+-]|\d+", expression)
    acc = int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2], strict=True):
        acc = acc + int(x) if op == "+" else acc - int(x)
    return acc


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 12),
    digits=st.integers(1, 3),
    seed=st.integers(0, 10**6),
    split=st.sampled_from(["train", "validation", "test"]),
)
def test_problem_shape_answer_and_solution(steps, digits, seed, split):
    """A problem has the asked difficulty, a non-negative chain, the true answer, and a
    solution whose every equation is correct arithmetic ending in the boxed answer."""
    p = make_problem(Difficulty(steps, digits), SPLIT_SEEDS[split].start + seed, split)
    assert len(p.ops) == steps and len(p.operands) == steps + 1
    assert all(len(str(x)) == digits for x in p.operands)
    assert min(p.running) >= 0
    assert p.answer == _eval_chain(p.expression)
    sol = p.solution()
    eqs = re.findall(r"(\d+)([+-])(\d+)=(\d+)\.", sol)
    assert len(eqs) == steps
    prev = p.operands[0]
    for (a, op, b, r), x in zip(eqs, p.operands[1:], strict=True):
        assert int(a) == prev and int(b) == x
        assert int(r) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        prev = int(r)
    assert sol.endswith(f"\\boxed{{{p.answer}}}")
    assert grade(p, sol)


def test_generation_is_deterministic_and_seed_dependent():
    """Same (difficulty, seed, split) gives the same problem; neighbouring seeds differ."""
    d = Difficulty(6, 2)
    a = make_problem(d, 10**9 + 7)
    assert a == make_problem(d, 10**9 + 7)
    assert a.expression != make_problem(d, 10**9 + 8).expression
    assert [p.expression for p in problems(d, 5)] == [p.expression for p in problems(d, 5)]


def test_seed_ranges_are_disjoint_and_enforced():
    """Split seed ranges never overlap, and a seed from another split's range is refused."""
    ranges = sorted(SPLIT_SEEDS.values(), key=lambda r: r.start)
    for lo, hi in itertools.pairwise(ranges):
        assert lo.stop <= hi.start
    assert SPLIT_SEEDS["test"].start >= 10**9
    with pytest.raises(ConfigError, match="outside the train range"):
        make_problem(Difficulty(3, 2), 10**9, "train")
    with pytest.raises(ConfigError, match="outside the test range"):
        make_problem(Difficulty(3, 2), 5, "test")
    with pytest.raises(ConfigError, match="split must be"):
        make_problem(Difficulty(3, 2), 5, "dev")


@pytest.mark.parametrize("difficulty", [Difficulty(1, 1), Difficulty(2, 1), Difficulty(6, 2)])
def test_every_generated_text_belongs_to_its_split(difficulty):
    """Each split only emits texts its hash bucket owns, so even in a tiny problem space
    (one-digit, one-step) no test text can appear in any training stream."""
    for split in SPLIT_SEEDS:
        for p in problems(difficulty, 30, split=split):
            assert split_of_text(p.expression) == split


def test_test_problems_never_occur_in_a_training_stream():
    """No test or validation problem of the default-range difficulties appears among
    30,000 training-stream problems of the same difficulties."""
    mix = [Difficulty(s, 2) for s in (2, 4, 6, 8)]
    stream = training_stream(mix, seed=0)
    seen = {next(stream).expression for _ in range(30_000)}
    held_out = [p.expression for d in mix for p in problems(d, 200, "test")]
    held_out += [p.expression for d in mix for p in problems(d, 100, "validation")]
    assert not seen.intersection(held_out)
    assert len(seen) > 29_000  # the stream does not repeat itself either


def test_training_stream_mixes_the_given_difficulties():
    """The stream draws from every listed difficulty and from no other."""
    mix = [Difficulty(1, 1), Difficulty(3, 2)]
    stream = training_stream(mix, seed=3)
    shapes = {(len(p.ops), len(str(p.operands[0]))) for p in (next(stream) for _ in range(200))}
    assert shapes == {(1, 1), (3, 2)}


def test_grade_uses_the_last_boxed_integer_exactly():
    """Grading is exact integer match of the last \\boxed{}; no box or a wrong box fails."""
    p = Problem((37, 58, 19), ("+", "-"))
    assert p.answer == 76
    assert grade(p, "37+58=95. 95-19=76. \\boxed{76}")
    assert grade(p, "\\boxed{75} wait \\boxed{ 76 }")
    assert not grade(p, "\\boxed{76} no: \\boxed{75}")
    assert not grade(p, "37+58=95. 95-19=76.")
    assert not grade(p, "\\boxed{760}")
    assert boxed_answer("\\boxed{-4}") == -4
    assert boxed_answer("\\boxed{x}") is None


def test_prompt_text_matches_the_training_format():
    """The prompt is 'Problem: <expr>\\nSolution: ' and parses back to the same problem."""
    p = make_problem(Difficulty(3, 2), 10**9)
    text = prompt_text(p)
    assert text == f"Problem: {p.expression}\nSolution: "
    back = parse_prompt(text)
    assert back is not None and back.operands == p.operands and back.ops == p.ops


@pytest.mark.parametrize(
    "prompt",
    [
        "37+58-19+64",
        "Problem: 37+58-19+64\nSolution: ",
        "Problem: 37+58-19+64",
        "Compute 37 + 58 - 19 + 64.",
        "What is 37+58-19+64?",
        "calculate 37+58-19+64=",
        "5+3",
        "999-998+100",
    ],
)
def test_in_family_accepts_chain_prompts(prompt):
    """Bare expressions, the training prompt and the PROMPT_LEADS forms ('Compute ...',
    'What is ...?') are in the family."""
    assert in_family(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "What is the capital of France?",
        "37*58",
        "37",
        "1234+5",  # operands longer than MAX_DIGITS
        "+".join(["12"] * (MAX_STEPS + 2)),  # more steps than trained
        "10-20+30",  # negative running result
        "07+5",  # leading zero: never generated
        "12+7-3",  # mixed widths: training never mixed them (every trace answers 5)
        "999-998+1",
        "Problem: 37+58\nSolution: 37+58=95.",  # already answered: not a prompt
    ],
)
def test_in_family_rejects_other_prompts(prompt):
    """Prose, other operators, bigger numbers, mixed widths, longer chains and negatives are
    outside."""
    assert not in_family(prompt)


def test_family_limits_cover_the_trained_range():
    """The limits in_family enforces are the ones the generator can produce."""
    p = make_problem(Difficulty(MAX_STEPS, MAX_DIGITS), SPLIT_SEEDS["test"].start)
    assert in_family(p.expression)


def test_difficulty_parse_and_validation():
    """'s6d2' parses; malformed names and out-of-range values raise ConfigError."""
    assert Difficulty.parse("s6d2") == Difficulty(6, 2)
    assert Difficulty(6, 2).name == "s6d2"
    for bad in ("6d2", "s6", "hard"):
        with pytest.raises(ConfigError, match="s<steps>d<digits>"):
            Difficulty.parse(bad)
    with pytest.raises(ConfigError, match="steps"):
        Difficulty(0, 2)
    with pytest.raises(ConfigError, match="digits"):
        Difficulty(3, 0)
