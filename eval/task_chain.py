"""The chain-arithmetic task family the bundled model is trained and evaluated on.

A problem is a chain of additions and subtractions of small integers; the solution writes
every running result, then the answer in \\boxed{}:

    Problem: 37+58-19+64
    Solution: 37+58=95. 95-19=76. 76+64=140. \\boxed{140}

The family is chosen so a tiny model fails *locally*: one carry or borrow digit comes out
wrong in one step, and that digit is where the model was unsure. That uncertainty is what
token confidence measures, so DeepConf has a real signal to work with.

Difficulty is (steps, digits): the number of operations and the digits per operand.
Running results never go negative (a subtraction that would is drawn as an addition).

Splits are disjoint twice over: by seed range (training seeds never reach the validation or
test ranges) and by the problem text itself (a hash of the text assigns every possible
problem to exactly one split, and each generator only emits texts of its own split), so no
test problem can occur in any training stream, at any difficulty.

    p = make_problem(Difficulty(steps=6, digits=2), seed=10**9, split="test")
    prompt_text(p)              # 'Problem: 41+27-...\\nSolution: '
    grade(p, completion)        # exact integer match of the last \\boxed{...}
    in_family(user_prompt)      # can the bundled model be expected to answer this?
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from deepconf.errors import ConfigError

TASK_ID = "chain-arith-v1"

# The model sees operands of 1..MAX_DIGITS digits and 1..MAX_STEPS operations in training;
# prompts outside that box are outside the family (in_family says so).
MAX_DIGITS = 3
MAX_STEPS = 10

PROMPT_PREFIX = "Problem: "
PROMPT_SUFFIX = "\nSolution: "

SPLIT_SEEDS: dict[str, range] = {
    "train": range(0, 900_000_000),
    "validation": range(900_000_000, 1_000_000_000),
    "test": range(1_000_000_000, 2_000_000_000),
}

# Text-hash buckets: 1/16 of all problem texts belong to test, 1/16 to validation.
_BUCKETS = 16
_BUCKET_SPLIT = {0: "test", 1: "validation"}
# A difficulty whose whole problem space is tiny might hold no text of a split; give up
# after this many draws instead of looping forever.
_MAX_DRAWS = 10_000

_EXPR = re.compile(r"\d+(?:[+-]\d+)+")
_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
# Words a user may pose a problem with ("Compute 37+58-19."); the chat template strips the
# same ones (eval/chain_tokenizer.py), so both doors read a prompt alike.
PROMPT_LEADS = ("Problem:", "Compute", "Calculate", "Evaluate", "What is")
_LEAD = "|".join(re.escape(w) for lead in PROMPT_LEADS for w in (lead, lead.lower()))
_PROMPT = re.compile(
    rf"^\s*(?:{_LEAD})?\s*(?P<expr>\d+(?:\s*[+-]\s*\d+)+)\s*[.=?]?\s*"
    r"(?:\n\s*Solution:\s*)?$"
)


@dataclass(frozen=True, slots=True)
class Difficulty:
    """steps: operations in the chain (operands - 1); digits: digits per operand."""

    steps: int
    digits: int

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 64:
            raise ConfigError(f"steps must be in 1..64, got {self.steps}")
        if not 1 <= self.digits <= 6:
            raise ConfigError(f"digits must be in 1..6, got {self.digits}")

    @property
    def name(self) -> str:
        return f"s{self.steps}d{self.digits}"

    @classmethod
    def parse(cls, text: str) -> Difficulty:
        """'s6d2' -> Difficulty(6, 2)."""
        m = re.fullmatch(r"s(\d+)d(\d+)", text.strip())
        if m is None:
            raise ConfigError(
                f"difficulty {text!r} is not of the form s<steps>d<digits>, e.g. s6d2"
            )
        return cls(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True, slots=True)
class Problem:
    operands: tuple[int, ...]
    ops: tuple[str, ...]  # "+" or "-", len(operands) - 1
    seed: int | None = None
    split: str | None = None

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            parts.append(f"{op}{x}")
        return "".join(parts)

    @property
    def running(self) -> list[int]:
        """Running results after each operation."""
        out, acc = [], self.operands[0]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            acc = acc + x if op == "+" else acc - x
            out.append(acc)
        return out

    @property
    def answer(self) -> int:
        return self.running[-1]

    @property
    def problem_id(self) -> str:
        return f"{TASK_ID}:{self.split or 'adhoc'}:{self.seed}:{self.expression}"

    def solution(self) -> str:
        """The reference chain of thought, one equation per step, then the boxed answer."""
        steps, acc = [], self.operands[0]
        for op, x, r in zip(self.ops, self.operands[1:], self.running, strict=True):
            steps.append(f"{acc}{op}{x}={r}.")
            acc = r
        return " ".join(steps) + f" \\boxed{{{self.answer}}}"


def split_of_text(expression: str) -> str:
    """The split that owns this problem text (stable across runs and machines)."""
    bucket = hashlib.blake2b(expression.encode(), digest_size=8).digest()[0] % _BUCKETS
    return _BUCKET_SPLIT.get(bucket, "train")


def _operand(rng: random.Random, digits: int) -> int:
    lo = 1 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10**digits - 1)


def _draw(rng: random.Random, difficulty: Difficulty) -> Problem:
    operands = [_operand(rng, difficulty.digits)]
    ops, acc = [], operands[0]
    for _ in range(difficulty.steps):
        x = _operand(rng, difficulty.digits)
        op = "-" if rng.random() < 0.5 and x <= acc else "+"
        acc = acc + x if op == "+" else acc - x
        operands.append(x)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops))


def make_problem(difficulty: Difficulty, seed: int, split: str = "test") -> Problem:
    """The problem of this split, difficulty and seed (deterministic).

    The seed must lie in the split's seed range, and the text is redrawn until its hash
    belongs to the split, so splits never share a problem text.
    """
    if split not in SPLIT_SEEDS:
        raise ConfigError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    if seed not in SPLIT_SEEDS[split]:
        r = SPLIT_SEEDS[split]
        raise ConfigError(f"seed {seed} is outside the {split} range [{r.start}, {r.stop})")
    rng = random.Random(f"{TASK_ID}/{difficulty.name}/{seed}")
    for _ in range(_MAX_DRAWS):
        p = _draw(rng, difficulty)
        if split_of_text(p.expression) == split:
            return Problem(p.operands, p.ops, seed=seed, split=split)
    raise ConfigError(
        f"difficulty {difficulty.name} has too few distinct problems to fill the {split} split;"
        " use more steps or digits"
    )


def problems(difficulty: Difficulty, n: int, split: str = "test", start: int = 0) -> list[Problem]:
    """n consecutive problems of a split: seeds range.start + start, +1, ..."""
    base = SPLIT_SEEDS[split].start + start if split in SPLIT_SEEDS else 0
    return [make_problem(difficulty, base + i, split) for i in range(n)]


def training_stream(difficulties: list[Difficulty], seed: int = 0) -> Iterator[Problem]:
    """An endless stream of training problems, difficulty drawn uniformly per problem."""
    rng = random.Random(f"{TASK_ID}/stream/{seed}")
    seeds = SPLIT_SEEDS["train"]
    # Streams of different seeds start 10^7 problems apart (wrapping inside the range).
    offset = (seed * 10_000_000) % len(seeds)
    while True:
        yield make_problem(rng.choice(difficulties), seeds[offset], "train")
        offset = (offset + 1) % len(seeds)


def prompt_text(problem: Problem | str) -> str:
    """The completion prompt the model was trained on (the chat template renders the same)."""
    expr = problem.expression if isinstance(problem, Problem) else problem
    return f"{PROMPT_PREFIX}{expr}{PROMPT_SUFFIX}"


def chat_messages(problem: Problem) -> list[dict[str, str]]:
    return [{"role": "user", "content": problem.expression}]


def boxed_answer(completion: str) -> int | None:
    """Integer in the last \\boxed{...} of a completion, None when there is none."""
    found = _BOXED.findall(completion)
    return int(found[-1]) if found else None


def grade(problem: Problem, completion: str) -> bool:
    """Exact integer match of the last boxed answer."""
    return boxed_answer(completion) == problem.answer


def parse_prompt(prompt: str) -> Problem | None:
    """The problem a user prompt poses, or None when it is not of this family.

    Accepts the bare expression ('37+58-19'), the training prompt ('Problem: ...\\nSolution: ')
    and the expression after one of PROMPT_LEADS ('Compute 37+58-19.', 'What is 37 + 58?');
    operands of at most MAX_DIGITS digits, all of one width (training drew every operand of
    a chain with the same number of digits: "12+7-3" gets 5 from every trace), 1..MAX_STEPS
    operations, and no negative running result (the model never saw one).
    """
    m = _PROMPT.match(prompt)
    if m is None:
        return None
    expr = re.sub(r"\s+", "", m.group("expr"))
    numbers = re.findall(r"\d+", expr)
    ops = tuple(re.findall(r"[+-]", expr))
    if not 1 <= len(ops) <= MAX_STEPS:
        return None
    if any(len(x) > MAX_DIGITS or (len(x) > 1 and x[0] == "0") for x in numbers):
        return None
    if len({len(x) for x in numbers}) > 1:
        return None
    p = Problem(tuple(int(x) for x in numbers), ops)
    if min(p.running) < 0:
        return None
    return p


def in_family(prompt: str) -> bool:
    """Whether the bundled model was trained on prompts like this one."""
    return parse_prompt(prompt) is not None
