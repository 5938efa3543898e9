"""Replay: offline methods and SIMULATED online DeepConf over recorded full traces.

This is the paper's evaluation protocol (§6: a pool of traces per problem, working sets
resampled, online runs simulated from the pool). The input is trace files written in
offline mode, where every trace ran to its end; a pool is one problem's finished traces.

Online DeepConf on one trace order (`simulate_order`) does exactly what the live controller
does with concurrency 1 and one token per batch:
    warm-up = the first W traces, run to completion; s = percentile(their lowest-group
    confidences, 100 - eta); warm-up traces with lowest >= s and an answer vote (weight:
    lowest); stop if beta >= tau; then trace after trace: a trace whose full-window group
    confidence drops below s is pruned at that token (its tokens up to there count), the
    others vote if lowest >= s; stop at beta >= tau, at `budget` traces or at the token
    budget. An empty vote falls back to plain majority over the traces that ran to the end.
`simulate_order_reference` walks the same traces token by token with GroupWindow, the slow
reference the fast path (prefix minima of the group confidences + binary search) is tested
against. Expected accuracy and tokens average over R random orders per problem.

Not here: reading gold answers (eval.datasets), tables (eval.report), the CLI.

    pools = load_pools(["traces/offline.jsonl"])
    answer, tokens = simulate_online(pools["p1"], OnlineParams(warmup=16, eta=10), rng)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepconf.confidence import GroupWindow, TraceMetrics, group_confidences, trace_metrics
from deepconf.config import ConfidenceConfig
from deepconf.errors import ConfigError
from deepconf.eval.grading import Grade, Grader
from deepconf.eval.report import Score
from deepconf.policies import Ended, Policy, PolicyRun
from deepconf.policies.filters import GroupThresholdPrune
from deepconf.policies.signals import MetricSignal, RawWeights
from deepconf.policies.stop import TauConsensus
from deepconf.policies.warmup import FixedWarmup
from deepconf.trace import TraceStatus, read_traces
from deepconf.voting import AnswerKeys, method_vote, ranked


@dataclass(frozen=True, slots=True)
class PoolTrace:
    """One recorded trace that ran to its end."""

    answer: str | None
    confs: np.ndarray  # (tokens,) token confidences, as stored (rounded to 4 decimals)
    status: TraceStatus = TraceStatus.COMPLETED
    metrics: TraceMetrics | None = None  # as recorded, from the unrounded confidences
    n_tokens: int | None = None  # an answer-only sample's length (it has no confidences)

    @property
    def tokens(self) -> int:
        return self.n_tokens if self.n_tokens is not None else int(self.confs.shape[0])


@dataclass(slots=True)
class Pool:
    """One problem's traces, with what replay needs precomputed per confidence setting."""

    problem_id: str
    traces: list[PoolTrace]
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0  # records left out (pruned, cancelled, failed)
    _prepared: dict[int, PreparedPool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.traces)

    def prepared(self, window: int | None = None) -> PreparedPool:
        """The arrays for a group window (default: the recorded one). Tail length and
        bottom fraction are always the recorded ones."""
        # Answer-only samples have no confidences: any window gives the same (empty) arrays.
        # A pool that does not record its window can still be replayed at a window given
        # (its metrics are then recomputed); only the default needs the recorded one.
        if self.meta.get("answer_only"):
            recorded: int | None = 1
        elif window is None:
            recorded = pool_window(self)
        else:
            recorded = self.meta.get("window")
        window = window or recorded
        assert window is not None
        if window not in self._prepared:
            tail = int(self.meta.get("tail") or ConfidenceConfig().tail)
            bottom = float(self.meta.get("bottom_fraction") or ConfidenceConfig().bottom_fraction)
            self._prepared[window] = PreparedPool.build(
                self.traces, window, tail, bottom, use_recorded=window == recorded
            )
        return self._prepared[window]


@dataclass(slots=True)
class PreparedPool:
    """Arrays over a pool for one (window, tail, bottom fraction)."""

    window: int
    tokens: np.ndarray  # (N,) int
    metrics: list[TraceMetrics | None]  # None for an empty trace (the controller's rule)
    answers: list[str | None]
    classes: np.ndarray  # (N,) int equivalence class of the answer, -1 for none
    neg_cummin: list[np.ndarray]  # per trace: -(running min of full-window groups), ascending
    keys: AnswerKeys  # the equivalence classes `classes` numbers

    @classmethod
    def build(
        cls,
        traces: Sequence[PoolTrace],
        window: int,
        tail: int,
        bottom: float,
        *,
        use_recorded: bool = False,
    ) -> Any:
        """Arrays for one window. With `use_recorded`, trace metrics are the recorded ones:
        files round confidences to 4 decimals, which ties traces whose live values differed
        in the 6th, and a tie at the threshold changes who votes."""
        keys = AnswerKeys()
        class_ids: dict[str, int] = {}
        classes = np.full(len(traces), -1, dtype=np.int64)
        metrics: list[TraceMetrics | None] = []
        neg_cummin: list[np.ndarray] = []
        for i, t in enumerate(traces):
            if t.answer is not None:
                classes[i] = class_ids.setdefault(keys.key(t.answer), len(class_ids))
            scored = t.confs.shape[0] > 0  # answer-only samples carry no confidences
            if use_recorded and t.metrics is not None:
                metrics.append(t.metrics)
            else:
                metrics.append(trace_metrics(t.confs, window, tail, bottom) if scored else None)
            if scored and t.tokens >= window:
                groups = group_confidences(t.confs, window)  # (tokens - window + 1,)
                neg_cummin.append(-np.minimum.accumulate(groups))
            else:  # never full: online, a short trace cannot be pruned
                neg_cummin.append(np.zeros(0))
        tokens = np.array([t.tokens for t in traces], dtype=np.int64)
        return cls(window, tokens, metrics, [t.answer for t in traces], classes, neg_cummin, keys)

    def prune_at(self, i: int, threshold: float) -> int | None:
        """1-based token at which trace i's full-window group first falls below threshold."""
        nc = self.neg_cummin[i]
        j = int(np.searchsorted(nc, -threshold, side="right"))  # first group < threshold
        return j + self.window if j < nc.shape[0] else None


@dataclass(frozen=True, slots=True)
class OnlineParams:
    """Online DeepConf settings for a simulation (eta: the keep percent, 10 low, 90 high)."""

    warmup: int = 16
    eta: float = 10.0
    tau: float = 0.95
    budget: int = 64
    token_budget: int | None = None

    def policy(self) -> Policy:
        """DeepConf at these settings, as a policy (deepconf-low at eta 10, -high at 90)."""
        return Policy(
            f"deepconf-{variant_name(self.eta)}",
            FixedWarmup(self.warmup),
            MetricSignal("lowest"),
            RawWeights(),
            GroupThresholdPrune(self.eta),
            TauConsensus(self.tau),
        )

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.budget < self.warmup:
            raise ConfigError(
                f"need 1 <= warmup <= budget, got warmup={self.warmup}, budget={self.budget}"
            )
        if not 0 < self.eta <= 100 or not 0 < self.tau <= 1:
            raise ConfigError(f"eta must be in (0, 100] and tau in (0, 1], got {self}")


@dataclass(frozen=True, slots=True)
class OnlineOutcome:
    answer: str | None
    tokens: int
    traces: int  # traces launched
    threshold: float | None
    stop_reason: str  # consensus | budget | token_budget


class _Tally:
    """The running plain count over class ids (the empty-vote fallback), summed in the
    controller's order so ties come out as deepconf.voting.vote's."""

    def __init__(self) -> None:
        self.rows: dict[int, list[Any]] = {}  # class -> [weight, count, first raw answer]

    def add(self, cls: int, weight: float, raw: str) -> None:
        row = self.rows.setdefault(cls, [0.0, 0, raw])
        row[0] += weight
        row[1] += 1

    def leader(self) -> tuple[str | None, float]:
        if not self.rows:
            return None, 0.0
        # The tie rule of vote(): weight (up to float noise), then count, then first seen.
        rows = list(self.rows.values())
        best = rows[ranked([r[0] for r in rows], [r[1] for r in rows])[0]]
        total = math.fsum(r[0] for r in self.rows.values())
        return best[2], (best[0] / total if total > 0 else 0.0)


# Finds where trace i is pruned under threshold s (None: never), or None when s is None.
PruneFinder = Callable[[PreparedPool, int, "float | None"], "int | None"]


def simulate_order(pool: PreparedPool, order: Sequence[int], params: OnlineParams) -> OnlineOutcome:
    """Online DeepConf over the traces of `order`, as the live controller runs it with
    concurrency 1 and one token per batch (fast path)."""
    return simulate_policy(pool, order, params.policy(), params.budget, params.token_budget)


def simulate_policy(
    pool: PreparedPool,
    order: Sequence[int],
    policy: Policy,
    budget: int,
    token_budget: int | None = None,
    k: int = 20,
) -> OnlineOutcome:
    """Any online policy over the traces of `order`, as the live controller runs it with
    concurrency 1 and one token per batch (k: the top logprobs the traces were scored with,
    for self-certainty)."""
    return _OnlineRun(pool, policy, budget, token_budget, k, _fast_prune).run(order)


def simulate_order_reference(
    pool: PreparedPool, traces: Sequence[PoolTrace], order: Sequence[int], params: OnlineParams
) -> OnlineOutcome:
    """The slow reference: every trace is walked token by token through a GroupWindow."""

    def walk(_: PreparedPool, i: int, threshold: float | None) -> int | None:
        if threshold is None:
            return None
        window = GroupWindow(pool.window)
        for pos, c in enumerate(traces[i].confs.tolist(), start=1):
            g = window.push(c)
            if g is not None and g < threshold:
                return pos
        return None

    policy = params.policy()
    return _OnlineRun(pool, policy, params.budget, params.token_budget, 20, walk).run(order)


def _fast_prune(pool: PreparedPool, i: int, threshold: float | None) -> int | None:
    return None if threshold is None else pool.prune_at(i, threshold)


class _OnlineRun:
    """One simulated online solve: the controller's SolveRun minus the streaming; every
    decision is the policy's PolicyRun, the object the live controller uses."""

    def __init__(
        self,
        pool: PreparedPool,
        policy: Policy,
        budget: int,
        token_budget: int | None,
        k: int,
        prune: PruneFinder,
    ) -> None:
        self.pool, self.prune = pool, prune
        self.budget, self.token_budget = budget, token_budget
        self.decide = PolicyRun(policy, budget, k, pool.keys)
        self.finished: list[int] = []  # traces that ran to their end, in launch order
        self.tokens = 0
        self.launched = 0
        self.stop: str | None = None

    def run(self, order: Sequence[int]) -> OnlineOutcome:
        decide = self.decide
        # 1. Warm-up: the first W traces run to completion (unless a stop ends it).
        for i in order[: decide.warmup_traces]:
            if decide.warmup_ended(self._trace(i, None)) and self.stop is None:
                self.stop = "consensus"
            if self.stop is not None:
                break
        if decide.warm:
            # 2-3. Threshold from the warm-up; its traces that pass it seed the vote.
            decide.end_warmup()
            if decide.stopped and self.stop is None:
                self.stop = "consensus"
            # 4. Trace after trace, pruned below s, until the stop rule or a budget.
            for i in order[self.launched : self.budget]:
                if self.stop is not None:
                    break
                if decide.ended(self._trace(i, decide.prune_threshold)) and self.stop is None:
                    self.stop = "consensus"
        # 5. An empty vote falls back to plain majority over the traces that ran to the end.
        state = decide.state
        answer = state.leader if state.votes else _majority(self.pool, self.finished)
        threshold = decide.threshold if decide.warm else None
        return OnlineOutcome(answer, self.tokens, self.launched, threshold, self.stop or "budget")

    def _trace(self, i: int, threshold: float | None) -> Ended:
        """Run trace i (launched as the next index); how it ended. The token budget is
        checked on every token that did not prune the trace (the controller's order)."""
        index = self.launched
        self.launched += 1
        pool = self.pool
        pruned = self.prune(pool, i, threshold)
        end = pruned if pruned is not None else int(pool.tokens[i])
        budget = self.token_budget
        if budget is not None and self.stop is None:
            reach = max(1, budget - self.tokens)  # the trace's token that meets the budget
            if reach < end:
                self.tokens += reach
                self.stop = "token_budget"
                return Ended(index, pool.answers[i], pool.metrics[i], finished=False)
            if reach == end and pruned is None:  # met on the last token: the trace ends
                self.stop = "token_budget"
        self.tokens += end
        if pruned is not None:
            return Ended(index, pool.answers[i], pool.metrics[i], finished=False)
        self.finished.append(i)
        return Ended(index, pool.answers[i], pool.metrics[i], finished=True)


def _majority(pool: PreparedPool, indices: Iterable[int]) -> str | None:
    tally = _Tally()
    for i in indices:
        answer = pool.answers[i]
        if answer is not None:
            tally.add(int(pool.classes[i]), 1.0, answer)
    return tally.leader()[0]


def simulate_online(
    pool: Pool, params: OnlineParams, rng: np.random.Generator | None, window: int | None = None
) -> tuple[str | None, int]:
    """(answer, tokens) of one simulated online run on a random order of the pool (rng None:
    the pool's own order). The window defaults to the one the traces were recorded with."""
    prepared = pool.prepared(window)
    order = np.arange(len(pool)) if rng is None else rng.permutation(len(pool))
    out = simulate_order(prepared, order.tolist(), params)
    return out.answer, out.tokens


def pool_window(pool: Pool) -> int:
    window = pool.meta.get("window")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(
            f"the traces of {pool.problem_id!r} do not record their window; pass --window"
        )
    return window


# --- trace files -> pools ------------------------------------------------------------------


def load_pools(paths: Iterable[str | Path]) -> dict[str, Pool]:
    """Pools by problem id from trace files (files may hold several problems; a problem
    may span files), each in trace-index order. Only traces that ran to their end are kept;
    the others are counted in
    `Pool.skipped`. Mixing files with different k, window or formula for one problem is an
    error, since their confidences do not compare."""
    pools: dict[str, Pool] = {}
    order: dict[str, list[tuple[int, int]]] = {}  # (file, trace index) of each pool trace
    for file_no, path in enumerate(paths):
        for stored in read_traces(path):
            meta, rec = stored.meta, stored.record
            pid = meta.get("problem_id")
            if pid is None:
                raise ConfigError(
                    f"{path}: a trace has no problem_id; record traces with an eval run or"
                    " DeepConf.solve(..., problem_id=...)"
                )
            pid = str(pid)
            pool = pools.setdefault(pid, Pool(pid, [], dict(meta)))
            for key in ("k", "window", "formula"):
                if key in meta and key in pool.meta and meta[key] != pool.meta[key]:
                    raise ConfigError(
                        f"{path}: problem {pid!r} mixes traces with {key}={pool.meta[key]!r}"
                        f" and {key}={meta[key]!r}; replay them separately"
                    )
            # A pool trace must have run to its natural end: a pruned or cancelled trace's
            # full length and confidences are unknown, so it cannot stand in for another's.
            if rec.finished:
                pool.traces.append(PoolTrace(rec.answer, rec.token_confs, rec.status, rec.metrics))
                order.setdefault(pid, []).append((file_no, rec.index))
            else:
                pool.skipped += 1
    for pid, keys in order.items():
        # Files list traces as they end; the pool's own order is launch (index) order, the
        # order a live run with the same seeds would meet them in.
        ranks = sorted(range(len(keys)), key=keys.__getitem__)
        pools[pid].traces = [pools[pid].traces[r] for r in ranks]
    empty = [pid for pid, p in pools.items() if not p.traces]
    if empty:
        warnings.warn(
            f"{len(empty)} problem(s) have no trace that ran to its end (online-mode files hold"
            " pruned traces; replay needs offline-mode files): " + ", ".join(empty[:5]),
            stacklevel=2,
        )
        for pid in empty:
            del pools[pid]
    if not pools:
        raise ConfigError("no replayable traces found: pass trace files written in offline mode")
    return pools


# --- expectations over resampled orders ------------------------------------------------------


class _Grades:
    """Grades cached by (answer, gold): a replay grades the same few answers thousands of times."""

    def __init__(self, grader: Grader | None = None) -> None:
        self.grader = grader or Grader()
        self._cache: dict[tuple[str | None, str], Grade] = {}

    def __call__(self, answer: str | None, gold: str) -> Grade:
        key = (answer, gold)
        if key not in self._cache:
            self._cache[key] = self.grader.grade(answer, gold)
        return self._cache[key]


def variant_name(eta: float) -> str:
    return {10.0: "low", 90.0: "high"}.get(float(eta), f"eta{eta:g}")


def expected_online(
    pool: Pool,
    gold: str,
    params: OnlineParams,
    label: str,
    repeats: int,
    rng: np.random.Generator,
    grades: _Grades,
    window: int | None = None,
) -> Score:
    """Mean correctness and tokens of online DeepConf over `repeats` random trace orders.
    A budget above the pool size is capped at it (each order is a permutation)."""
    prepared = pool.prepared(window)
    correct, tokens, unparsed, example = 0.0, 0.0, 0, None
    for _ in range(repeats):
        out = simulate_order(prepared, rng.permutation(len(pool)).tolist(), params)
        g = grades(out.answer, gold)
        correct += g.correct
        tokens += out.tokens
        if g.status == "unparsed":
            unparsed, example = unparsed + 1, out.answer
    return Score(
        label, pool.problem_id, correct / repeats, tokens / repeats, example, "expected", unparsed
    )


def expected_offline(
    pool: Pool,
    gold: str,
    methods: Sequence[str],
    budget: int,
    repeats: int,
    rng: np.random.Generator,
    grades: _Grades,
    window: int | None = None,
) -> list[Score]:
    """pass@1 (mean over all pool traces) and each offline method over working sets of
    `budget` traces drawn without replacement, `repeats` times (once when the budget covers
    the whole pool: every draw is then the same set)."""
    prepared = pool.prepared(window)
    n = len(pool)
    k = min(budget, n)
    scores = []
    trace_grades = [grades(a, gold) for a in prepared.answers]
    scores.append(
        Score(
            "pass@1",
            pool.problem_id,
            float(np.mean([g.correct for g in trace_grades])),
            float(prepared.tokens.mean()),
            None,
            "expected",
            sum(g.status == "unparsed" for g in trace_grades),
        )
    )
    draws = 1 if k == n else repeats
    acc = {m: [0.0, 0, None] for m in methods}
    spent = 0.0
    for _ in range(draws):
        subset = np.arange(n) if k == n else rng.choice(n, size=k, replace=False)
        spent += float(prepared.tokens[subset].sum())
        answers = [prepared.answers[i] for i in subset]
        metrics = [prepared.metrics[i] for i in subset]
        for m in methods:
            leader = method_vote(m, answers, metrics, prepared.keys).leader
            g = grades(leader, gold)
            acc[m][0] += g.correct
            if g.status == "unparsed":
                acc[m][1] += 1
                acc[m][2] = leader
    for m in methods:
        label = f"majority@{budget}" if m == "majority" else m  # one row whatever the pool size
        c, unparsed, example = acc[m]
        scores.append(
            Score(label, pool.problem_id, c / draws, spent / draws, example, "expected", unparsed)
        )
    return scores


def replay_scores(
    pools: dict[str, Pool],
    golds: dict[str, str],
    *,
    online: Sequence[tuple[str, OnlineParams]],
    methods: Sequence[str],
    budget: int,
    repeats: int = 64,
    seed: int = 0,
    window: int | None = None,
    grader: Grader | None = None,
) -> list[Score]:
    """Scores of every offline method and online setting on every pool with a gold answer.
    Problems without one are an error (a silent skip would change the accuracy base)."""
    missing = sorted(set(pools) - set(golds))
    if missing:
        raise ConfigError(
            f"no gold answer for {len(missing)} problem(s), e.g. {missing[0]!r}: pass the eval"
            " results folder or an --answers file that covers every problem"
        )
    grades = _Grades(grader)
    rng = np.random.default_rng(seed)
    scores: list[Score] = []
    for pid, pool in pools.items():
        scores += expected_offline(pool, golds[pid], methods, budget, repeats, rng, grades, window)
        for label, params in online:
            scores.append(
                expected_online(pool, golds[pid], params, label, repeats, rng, grades, window)
            )
    return scores


def online_grid(
    etas: Sequence[float],
    taus: Sequence[float],
    warmups: Sequence[int],
    budget: int,
    token_budget: int | None = None,
) -> list[tuple[str, OnlineParams]]:
    """Every combination, labelled deepconf-<variant>, with the swept values appended when
    more than one value of a parameter is given."""
    grid = []
    for eta in etas:
        for tau in taus:
            for w in warmups:
                label = f"deepconf-{variant_name(eta)}"
                extra = []
                if len(taus) > 1:
                    extra.append(f"τ={tau:g}")
                if len(warmups) > 1:
                    extra.append(f"W={w}")
                if extra:
                    label += " (" + ", ".join(extra) + ")"
                grid.append((label, OnlineParams(min(w, budget), eta, tau, budget, token_budget)))
    return grid
