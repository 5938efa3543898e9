"""Votes over trace answers: majority, confidence-weighted, and filtered to the top eta%.

DeepConf's offline answer (Alg. 1) keeps the top eta% of traces by a confidence metric and
votes weighted by that same metric, raw and un-normalised; online it keeps a running vote whose
consensus beta = V(leader) / sum V stops generation once it reaches tau. Answers are keyed by
mathematical equivalence (deepconf.answers.AnswerKeys). Pure functions: no I/O, no asyncio;
thresholds for the online filter are the controller's business.

    table = vote(["1/2", "0.5", "3"], weights=[16.2, 15.9, 18.0])
    table.leader, table.beta                # -> "1/2", 0.639...
    method_vote("tail@10", answers, metrics, AnswerKeys())

Ties are decided by a stated rule, never by float noise. One prefix gives one confidence,
but not bit for bit: the engine's matmuls round differently in each batch they run in
(measured on the bundled model: confidences of the same window differ by up to 4e-7 around
15, while windows that really differ are 2e-2 apart or more). So two weights, or a
confidence and a threshold, within TIE_TOLERANCE (relative) of each other are equal; among
answers of equal weight the one with more traces wins, then the one seen first (callers pass
traces in index order, which seeds fix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepconf.answers import AnswerKeys, extract_answer
from deepconf.confidence import TraceMetrics
from deepconf.config import METHOD_PATTERN, METRICS
from deepconf.errors import ConfigError

__all__ = [
    "OFFLINE_METHODS",
    "TIE_TOLERANCE",
    "AnswerKeys",
    "VoteRow",
    "VoteTable",
    "extract_answer",
    "keep_top",
    "method_vote",
    "ranked",
    "same_weight",
    "tolerant_threshold",
    "vote",
]

TIE_TOLERANCE = 1e-6  # relative: far above float noise (~3e-8), far below real gaps (~1e-3)

# The paper's offline grid (Tables 1, 5, 10): plain majority, each metric as a weight alone,
# and each metric as filter + weight at eta = 10 (DeepConf-low) and eta = 90 (DeepConf-high).
OFFLINE_METHODS: tuple[str, ...] = (
    "majority",
    *METRICS,
    *(f"{m}@10" for m in METRICS),
    *(f"{m}@90" for m in METRICS),
)


@dataclass(slots=True)
class VoteRow:
    """One candidate answer: its class key, how many traces chose it, their summed weight."""

    answer: str
    count: int
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def same_weight(a: float, b: float) -> bool:
    """Whether two weights are equal up to float noise (TIE_TOLERANCE, relative)."""
    return math.isclose(a, b, rel_tol=TIE_TOLERANCE)


def tolerant_threshold(threshold: float) -> float:
    """The threshold a confidence must reach, lowered by TIE_TOLERANCE: a confidence equal to
    it up to float noise reaches it. Without this, traces sharing the window that set the
    threshold (the common prefix of one prompt) would be kept or cut at random."""
    return threshold - TIE_TOLERANCE * abs(threshold)


def ranked(weights: Sequence[float], counts: Sequence[int]) -> list[int]:
    """Candidate indices (given in first-seen order), strongest first: by weight, weights
    within TIE_TOLERANCE counting as equal; then more traces; then first seen."""
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    out: list[int] = []
    while order:
        top = weights[order[0]]
        tied = [i for i in order if same_weight(weights[i], top)]
        order = [i for i in order if not same_weight(weights[i], top)]
        out += sorted(tied, key=lambda i: (-counts[i], i))
    return out


@dataclass(slots=True)
class VoteTable:
    """Candidates strongest first (`ranked`: weight, then count, then first seen)."""

    rows: list[VoteRow]

    @property
    def leader(self) -> str | None:
        return self.rows[0].answer if self.rows else None

    @property
    def total_weight(self) -> float:
        return math.fsum(r.weight for r in self.rows)

    @property
    def beta(self) -> float:
        """Consensus V(leader) / sum V; 0.0 with no votes (or only zero weights), so an empty
        or weightless vote never reads as agreement."""
        total = self.total_weight
        return self.rows[0].weight / total if self.rows and total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "beta": self.beta,
            "total_weight": self.total_weight,
            "rows": [r.to_dict() for r in self.rows],
        }


def vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    keys: AnswerKeys | None = None,
) -> VoteTable:
    """Tally answers by equivalence class.

    Arguments:
        answers: one per trace; None (no answer found) is dropped.
        weights: one per trace, finite and >= 0 (a confidence); None is a plain majority,
            every vote weighing 1.0.
        keys: the equivalence classes to use; share one across votes of a problem so the
            same class keeps the same name. None: a fresh AnswerKeys for this call.
    Return:
        VoteTable. A row's answer is its class key (the first raw string the keys saw in
        that class), its weight the sum of its traces' weights in input order.
    """
    if weights is not None and len(weights) != len(answers):
        raise ConfigError(
            f"vote got {len(answers)} answers but {len(weights)} weights: pass one weight per"
            " answer, or weights=None for a plain majority"
        )
    keys = keys if keys is not None else AnswerKeys()
    rows: dict[str, VoteRow] = {}  # insertion order = first seen, the last tie-break
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        w = 1.0 if weights is None else float(weights[i])
        if not math.isfinite(w) or w < 0:
            raise ConfigError(
                f"vote weight {w!r} for answer {answer!r} is not a finite number >= 0: weights"
                " are trace confidences; drop traces without a confidence instead"
            )
        key = keys.key(answer)
        row = rows.setdefault(key, VoteRow(key, 0, 0.0))
        row.count += 1
        row.weight += w
    seen = list(rows.values())  # first-seen order
    order = ranked([r.weight for r in seen], [r.count for r in seen])
    return VoteTable([seen[i] for i in order])


def keep_top(values: Sequence[float], keep_percent: float) -> np.ndarray:
    """Mask of the top `keep_percent`% of values (Alg. 1's filter).

    The threshold is np.percentile(values, 100 - keep_percent) with linear interpolation, as
    the reference code does, and values >= threshold are kept: ties at the threshold all stay
    (up to float noise: `tolerant_threshold`), so slightly more than keep_percent% can
    survive. Empty input gives an empty mask.
    """
    if not 0 < keep_percent <= 100:
        raise ConfigError(f"keep_percent must be in (0, 100], got {keep_percent}")
    v = np.asarray(values, dtype=np.float64)  # (n,)
    if v.ndim != 1:
        raise ConfigError(f"keep_top needs a flat sequence of values, got shape {v.shape}")
    if v.size == 0:
        return np.zeros(0, dtype=bool)
    if not np.isfinite(v).all():
        raise ConfigError("keep_top got a NaN or infinite confidence: drop such traces first")
    threshold = float(np.percentile(v, 100.0 - keep_percent, method="linear"))
    return v >= tolerant_threshold(threshold)  # (n,) bool


def method_vote(
    method: str,
    answers: Sequence[str | None],
    metrics: Sequence[TraceMetrics | None],
    keys: AnswerKeys | None = None,
) -> VoteTable:
    """The vote of one offline method over a set of traces (one answer and metrics each).

    "majority" counts every trace with an answer. "<metric>" weights each answered trace by
    that metric. "<metric>@<eta>" first keeps the top eta% BY THAT METRIC AMONG THE TRACES
    THAT HAVE AN ANSWER (the reference drops answerless traces before filtering), then votes
    weighted by the same metric. Metric methods skip traces whose metrics are None.
    """
    m = METHOD_PATTERN.match(method)
    if not m:
        raise ConfigError(
            f"unknown voting method {method!r}: use one of {', '.join(OFFLINE_METHODS)}"
        )
    if len(answers) != len(metrics):
        raise ConfigError(
            f"method_vote got {len(answers)} answers but {len(metrics)} metrics: pass one of"
            " each per trace"
        )
    metric = m.group("metric")
    if metric is None:
        return vote(answers, None, keys)
    voters = [
        (a, t.get(metric))
        for a, t in zip(answers, metrics, strict=True)
        if a is not None and t is not None
    ]
    if m.group("eta") is not None and voters:
        mask = keep_top([w for _, w in voters], float(m.group("eta")))
        voters = [v for v, keep in zip(voters, mask.tolist(), strict=True) if keep]
    return vote([a for a, _ in voters], [w for _, w in voters], keys)
