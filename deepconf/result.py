"""What a solve returns (`SolveResult`) and what it reports while it runs (`Progress`).

Plain records: no generation, no voting here. `SolveResult.to_dict()` is the JSON shape the
CLI prints and eval files store; per-token confidences are left out unless asked for.

    result = await DeepConf(backend, config).solve(prompt)
    result.answer, result.beta, result.tokens.total
    json.dumps(result.to_dict(), default=json_default)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deepconf.trace import TraceRecord, TraceStatus
from deepconf.voting import VoteRow


def json_default(value: Any) -> Any:
    """`default=` for json.dumps of results: a stray numpy value becomes its Python value,
    anything else its string, so a results line is always written."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclass(frozen=True, slots=True)
class TokenTotals:
    """Generated tokens by phase. Every received token counts, pruned, cancelled and failed
    traces included: that is what the server spent."""

    warmup: int = 0
    online: int = 0
    offline: int = 0

    @property
    def total(self) -> int:
        return self.warmup + self.online + self.offline

    def to_dict(self) -> dict[str, int]:
        return {
            "warmup": self.warmup,
            "online": self.online,
            "offline": self.offline,
            "total": self.total,
        }

    @classmethod
    def of(cls, traces: Sequence[TraceRecord]) -> TokenTotals:
        by_phase = {"warmup": 0, "online": 0, "offline": 0}
        for t in traces:
            by_phase[t.phase] += t.tokens
        return cls(**by_phase)


@dataclass(slots=True)
class SolveResult:
    """The outcome of one solve.

    Attributes:
        answer: the chosen answer (None if no trace produced one).
        votes: the final vote, strongest first.
        beta: leader weight / total weight of that vote (0.0 when empty).
        threshold: the online prune threshold s (offline: None).
        tokens: tokens generated, by phase.
        traces: every trace launched, failed ones included, in index order.
        stop_reason: "consensus" | "budget" | "token_budget".
        fallback: a sentence when the answer did not come from the intended vote.
        methods: offline: the answer of every voting method; online: the confidence vote
            ("deepconf") and plain majority over the traces that ran to completion.
        tokens_majority_estimate: an estimate of what plain majority voting over the same
            trace budget would spend: the mean tokens of traces that ran to completion times
            the budget. Pruned traces were cut short, so their full length is unknown; the
            completed ones stand in for them.
        majority_votes: plain majority's vote over the traces that ran to their end (the
            same traces DeepConf chose from), strongest first: the safety net shown beside
            DeepConf's answer (`majority`, `agrees`).
        offline_method: offline: the voting method that chose `answer` (e.g. tail@10).
        policy: online: the policy that decided, in words (deepconf.policies.describe:
            name, warmup, vote, filter, stop); offline: None.
        unjudged_answers: answers compared as plain strings though math-verify would have
            judged them (it ran out of time): equal values written differently (0.5, 1/2)
            may have counted apart. 0 in a normal solve.
    """

    answer: str | None
    votes: list[VoteRow]
    beta: float
    threshold: float | None
    tokens: TokenTotals
    wall_time: float
    traces: list[TraceRecord]
    stop_reason: str
    fallback: str | None
    methods: dict[str, str | None]
    mode: str
    variant: str
    problem_id: str | None = None
    budget: int = 0
    tokens_majority_estimate: float | None = None
    majority_votes: list[VoteRow] = field(default_factory=list)
    offline_method: str | None = None
    policy: dict[str, str] | None = None
    unjudged_answers: int = 0

    def count(self, status: TraceStatus) -> int:
        return sum(1 for t in self.traces if t.status == status)

    def __repr__(self) -> str:
        """One line: the answer and how it was reached, not every trace's text and
        confidences. The full repr ran to megabytes for a big solve, and Python 3.11's
        asyncio.run() builds it whenever it ends (restoring the SIGINT handler formats the
        main task, its result included): ~15% of a 64 x 500-token solve's CPU."""
        return (
            f"SolveResult(answer={self.answer!r}, beta={self.beta:.3f},"
            f" traces={len(self.traces)}, tokens={self.tokens.total},"
            f" stop_reason={self.stop_reason!r}, mode={self.mode!r})"
        )

    @property
    def method(self) -> str:
        """The vote that chose `answer`: "deepconf" online, the offline method offline."""
        return self.offline_method or "deepconf"

    @property
    def unjudged_note(self) -> str | None:
        """A sentence when answers were compared as plain strings (see unjudged_answers)."""
        n = self.unjudged_answers
        if not n:
            return None
        return (
            f"{n} answer{'s were' if n > 1 else ' was'} compared as plain text: math-verify ran"
            " out of time (a slow comparison, or its budget for this vote), so equal values"
            " written differently (0.5 and 1/2) may have counted apart"
        )

    @property
    def majority(self) -> str | None:
        """Plain majority's answer over the traces that ran to their end."""
        if self.majority_votes:
            return self.majority_votes[0].answer
        return self.methods.get("majority")

    @property
    def agrees(self) -> bool:
        """Whether DeepConf's answer is plain majority's (answers are equivalence-class
        keys of one solve, so equal answers are equal strings)."""
        return self.answer == self.majority

    def majority_dict(self) -> dict[str, Any]:
        """{"answer", "agrees", "votes"}: plain majority beside DeepConf, for JSON."""
        return {
            "answer": self.majority,
            "agrees": self.agrees,
            "votes": [
                {"answer": v.answer, "count": v.count, "weight": v.weight}
                for v in self.majority_votes
            ],
        }

    def to_dict(self, *, token_confs: bool = False) -> dict[str, Any]:
        """JSON-able summary. Per-trace token confidences only with `token_confs=True`;
        the text is left out too (trace files keep both)."""
        traces = []
        for t in self.traces:
            d = t.to_json_dict(token_confs=token_confs)
            if not token_confs:
                del d["text"], d["reasoning"]
            traces.append(d)
        return {
            "problem_id": self.problem_id,
            "answer": self.answer,
            "votes": [
                {"answer": v.answer, "count": v.count, "weight": v.weight} for v in self.votes
            ],
            "beta": self.beta,
            "threshold": self.threshold,
            "tokens": self.tokens.to_dict(),
            "tokens_majority_estimate": self.tokens_majority_estimate,
            "wall_time": round(self.wall_time, 4),
            "stop_reason": self.stop_reason,
            "fallback": self.fallback,
            "methods": dict(self.methods),
            "majority": self.majority_dict(),
            "offline_method": self.offline_method,
            "policy": dict(self.policy) if self.policy is not None else None,
            "unjudged_answers": self.unjudged_answers,
            "mode": self.mode,
            "variant": self.variant,
            "budget": self.budget,
            "counts": {str(s): self.count(s) for s in TraceStatus},
            "traces": traces,
        }


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for live views, sent after every trace state change and at most every
    ~0.1 s while tokens flow. `tokens` counts every token received so far."""

    phase: str
    in_flight: int
    completed: int
    pruned: int
    failed: int
    cancelled: int
    truncated: int
    threshold: float | None
    leader: str | None
    beta: float
    tokens: int
    launched: int
    budget: int
    token_budget: int | None = None
