"""The async DeepConf controller: launches traces, streams them, prunes, votes, stops.

It knows only the `Backend` protocol. Generation runs in one `asyncio.TaskGroup`; every
trace is a task that owns its stream (read by `deliver`, which hands each batch to the trace's
`_consume` and closes the stream when it says stop, on cancellation and on error, aborting
the request on the server) and reports its `TraceRecord` on a queue. The solve loop
reads like the paper's algorithms (online: deepconf/online.py, offline: deepconf/offline.py):

    warm-up -> threshold s -> seed the vote -> stream + prune -> vote -> stop

What is not here: confidence arithmetic (deepconf.confidence), answer extraction and
voting (deepconf.voting), trace files (deepconf.trace).

    engine = DeepConf(backend, DeepConfConfig(variant="low", budget=64), trace_path="t.jsonl")
    result = await engine.solve("What is 2+3? Put the answer in \\boxed{}.")
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepconf.backend import Backend, Prompt, TokenBatch, TraceRequest, deliver
from deepconf.confidence import GroupWindow, group_confidences, token_confidence, trace_metrics
from deepconf.config import DeepConfConfig
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConnectError,
    DeepConfError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    StreamError,
)
from deepconf.model_settings import model_card, with_model_defaults
from deepconf.result import Progress, SolveResult, TokenTotals
from deepconf.trace import FORMULA, TraceRecord, TraceStatus, TraceWriter
from deepconf.trace_buffers import ConfBuffer, TextBuffer
from deepconf.voting import AnswerKeys, VoteTable, extract_answer, vote

log = logging.getLogger(__name__)

# During token flow, progress snapshots go out at most this often (state changes always do).
PROGRESS_INTERVAL_S = 0.1

ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class _TraceState:
    """One trace while it streams (the controller's per-row state)."""

    index: int
    phase: str
    seed: int | None
    threshold: float | None  # prune below this (None: never prune)
    window: GroupWindow | None  # group confidence, only kept when pruning
    started: float
    confs: ConfBuffer = field(default_factory=ConfBuffer)  # (tokens,) so far
    text: TextBuffer = field(default_factory=TextBuffer)
    reasoning: TextBuffer = field(default_factory=TextBuffer)
    tokens: int = 0
    status: TraceStatus | None = None
    finish_reason: str | None = None
    pruned_at: int | None = None
    error: BackendError | None = None
    server_tokens: int | None = None  # completion tokens the server's usage reported


class DeepConf:
    """DeepConf over one backend. `solve()` may be called many times, one at a time or
    concurrently; each call has its own state.

    Arguments:
        backend: any `Backend`; `solve()` calls its idempotent `open()`, never `aclose()`.
        config: the DeepConf settings (defaults: online, DeepConf-low, budget 64).
            Settings left unset come from the backend's model card when it has one
            (the bundled model's window 16, tail 16, ...), as in every other door.
        trace_path: append every trace to this JSONL file as it ends.
        on_progress: called with a `Progress` after every trace state change and at most
            every 0.1 s while tokens flow. It runs on the event loop: keep it quick.
    """

    def __init__(
        self,
        backend: Backend,
        config: DeepConfConfig | None = None,
        *,
        trace_path: str | Path | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.backend = backend
        self.config, _ = with_model_defaults(config, model_card(backend))
        self.trace_path = Path(trace_path) if trace_path is not None else None
        self.on_progress = on_progress

    async def solve(self, prompt: Prompt, *, problem_id: str | None = None) -> SolveResult:
        """Run DeepConf on one prompt and return the voted answer with every trace."""
        await self.backend.open()
        writer = None
        if self.trace_path is not None:
            writer = TraceWriter(self.trace_path, _trace_meta(self, problem_id))
        run = SolveRun(self.backend, self.config, prompt, writer, self.on_progress)
        with writer if writer is not None else contextlib.nullcontext():
            result = await run.run()
        result.problem_id = problem_id
        return result


def _trace_meta(engine: DeepConf, problem_id: str | None) -> dict[str, object]:
    cfg = engine.config
    return {
        "problem_id": problem_id,
        "model": getattr(engine.backend, "model", None),
        "mode": cfg.mode,
        "variant": cfg.variant,
        "sampling": cfg.sampling.model_dump(mode="json"),
        "k": cfg.confidence.top_logprobs,
        "window": cfg.confidence.window,
        "tail": cfg.confidence.tail,
        "bottom_fraction": cfg.confidence.bottom_fraction,
        "formula": FORMULA,
    }


class SolveRun:
    """The state of one solve: traces launched, records, tokens, the current vote.

    The scheduling primitive is `generate(phase, target, threshold, on_finish)`: keep up to
    `concurrency` traces in flight until `target` traces of the phase have ended without
    failing, replacing failed ones, and stop early when `stop_reason` gets set.
    """

    def __init__(
        self,
        backend: Backend,
        config: DeepConfConfig,
        prompt: Prompt,
        writer: TraceWriter | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.prompt = prompt
        self.writer = writer
        self.on_progress = on_progress
        self.keys = AnswerKeys()
        self.records: list[TraceRecord] = []
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.done: asyncio.Queue[TraceRecord] = asyncio.Queue()
        self.phase = "offline" if config.mode == "offline" else "warmup"
        self.next_index = 0
        self.tokens = 0
        self.counts = {s: 0 for s in TraceStatus}
        self.threshold: float | None = None
        self.table: VoteTable = vote([], keys=self.keys)
        self.stop_reason: str | None = None
        self.fatal: BackendError | None = None
        self._failure_streak: list[BackendError] = []
        self._errors: dict[int, BackendError] = {}  # failed traces' errors, until settled
        self._tg: asyncio.TaskGroup | None = None
        self._last_progress = 0.0
        self._progress_broken = False

    async def run(self) -> SolveResult:
        # Imported here: online/offline import this module for SolveRun.
        from deepconf.offline import run_offline
        from deepconf.online import run_online

        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                policy = run_offline if self.config.mode == "offline" else run_online
                result = await policy(self)
        except BaseExceptionGroup as group:
            # Trace tasks record their own errors, so a group here holds unexpected ones
            # (e.g. a user's answer pattern timing out in several traces at once): surface
            # the first deepconf error plainly, as the CLI, serve and the API expect.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            first = next((e for e in group.exceptions if isinstance(e, DeepConfError)), None)
            if first is not None:
                raise first from group
            raise
        if self.fatal is not None:
            raise self.fatal
        result.wall_time = time.monotonic() - started
        return result

    # -- scheduling ----------------------------------------------------------------------

    async def generate(
        self,
        phase: str,
        target: int,
        threshold: float | None,
        on_finish: Callable[[TraceRecord], None] | None = None,
    ) -> int:
        """Run traces of `phase` until `target` of them end without failing, or a stop.

        Returns how many ended without failing. A failed trace does not use up the
        target: it is replaced. `budget` failures in a row set `fatal` and stop.
        """
        cfg = self.config
        self.phase = phase
        ended = 0
        while True:
            while (
                self.stop_reason is None
                and ended + len(self.tasks) < target
                and len(self.tasks) < cfg.concurrency
            ):
                self._launch(phase, threshold)
            if not self.tasks:
                return ended
            record = await self.done.get()
            self.tasks.pop(record.index, None)
            ended += self._settle(record, on_finish)
            if self.stop_reason is not None:
                ended += await self._cancel_in_flight(on_finish)
                return ended

    def _settle(self, record: TraceRecord, on_finish: Callable[[TraceRecord], None] | None) -> int:
        """Account for one ended trace; 1 if it counts toward the phase's target."""
        if record.status is TraceStatus.FAILED:
            error = self._errors.pop(record.index, None) or BackendError(record.error or "")
            self._failure_streak.append(error)
            # No retry fixes a missing capability: stop at the first, not after `budget`.
            if self.fatal is None and (
                isinstance(error, CapabilityError)
                or len(self._failure_streak) >= self.config.budget
            ):
                self.fatal = give_up(self._failure_streak)
                self.stop_reason = "failed"
            return 0
        self._failure_streak.clear()
        if on_finish is not None:
            on_finish(record)
        return 1

    def _launch(self, phase: str, threshold: float | None) -> None:
        assert self._tg is not None, "generate() runs inside run()"
        cfg = self.config
        index = self.next_index
        self.next_index += 1
        seed = cfg.sampling.seed + index if cfg.sampling.seed is not None else None
        window = GroupWindow(cfg.confidence.window) if threshold is not None else None
        state = _TraceState(index, phase, seed, threshold, window, time.monotonic())
        self.tasks[index] = self._tg.create_task(self._run_trace(state), name=f"trace-{index}")
        self._progress()

    async def _cancel_in_flight(self, on_finish: Callable[[TraceRecord], None] | None) -> int:
        """Cancel every trace still streaming and wait until each has recorded itself.
        Traces that had already ended (queued, not yet read) are settled normally."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.tasks.clear()
        ended = 0
        while not self.done.empty():
            ended += self._settle(self.done.get_nowait(), on_finish)
        return ended

    # -- one trace -----------------------------------------------------------------------

    async def _run_trace(self, st: _TraceState) -> None:
        cfg = self.config
        request = TraceRequest(
            index=st.index,
            prompt=self.prompt,
            sampling=cfg.sampling,
            top_logprobs=cfg.confidence.top_logprobs,
            seed=st.seed,
        )
        try:
            # On prune (consume says stop), on cancellation and on error the stream is
            # closed, which aborts the request on the server.
            await deliver(self.backend, request, functools.partial(self._consume, st))
        except asyncio.CancelledError:
            # Keep "pruned" if the cancel landed while its stream was being closed.
            if st.status is None:
                st.status = TraceStatus.CANCELLED
            self._finish(st)
            raise
        except Exception as exc:
            # A BackendError, or anything else raised mid-stream: this trace failed and
            # will be replaced; the solve goes on (a streak of failures stops it).
            st.status = TraceStatus.FAILED
            st.error = exc if isinstance(exc, BackendError) else StreamError(_described(exc))
            if isinstance(exc, DeepConfError) and not isinstance(exc, BackendError):
                # The user's input (a setting, an answer pattern): every trace would fail
                # the same way, so the solve ends with it, this trace recorded first.
                self._finish(st)
                raise
        if st.status is None:
            st.error = _unfinished(st)
            if st.error is not None:
                st.status = TraceStatus.FAILED
            else:
                truncated = st.finish_reason == "length"
                st.status = TraceStatus.TRUNCATED if truncated else TraceStatus.COMPLETED
        self._finish(st)

    def _consume(self, st: _TraceState, batch: TokenBatch) -> bool:
        """Take one batch; True when the trace must stop now (pruned or solve stopping)."""
        n = batch.n_tokens
        if batch.text:
            st.text.append(batch.text)
        if batch.reasoning:
            st.reasoning.append(batch.reasoning)
        if batch.finish_reason is not None:
            st.finish_reason = batch.finish_reason
        if "completion_tokens" in batch.usage:
            st.server_tokens = batch.usage["completion_tokens"]
        if n:
            confs = batch.token_conf  # (n,), where the decoder computed them
            if confs is None:
                confs = token_confidence(batch.top_logprobs)
            st.confs.extend(confs)
            st.tokens += n
            self.tokens += n
            if st.window is not None and st.threshold is not None:
                low = st.window.push_many(confs)  # None until the window is full
                if low is not None and low < st.threshold:
                    st.pruned_at = self._prune_position(st, n, st.threshold)
                    st.status = TraceStatus.PRUNED
                    return True
        budget = self.config.token_budget
        if self.stop_reason is None and budget is not None and self.tokens >= budget:
            self.stop_reason = "token_budget"
        if self.stop_reason is not None and batch.finish_reason is None:
            st.status = TraceStatus.CANCELLED
            return True
        self._progress(throttled=True)
        return False

    def _prune_position(self, st: _TraceState, n: int, threshold: float) -> int:
        """1-based token position whose full-window group first fell below threshold,
        found among the last batch's n positions (only the prune path pays for this)."""
        w = st.window.window if st.window is not None else 1
        tail = st.confs.view()[-(w + n - 1) :]  # every window ending in this batch
        groups = group_confidences(tail, w)  # (len(tail) - w + 1,), ends at tail[w-1:]
        below = np.flatnonzero(groups < threshold)
        # The running sum and the cumsum differ by ~1e-12; if they disagree at the
        # boundary, the batch's last position is the honest answer.
        first = int(below[0]) if below.size else groups.shape[0] - 1
        return st.tokens - tail.shape[0] + first + w

    def _finish(self, st: _TraceState) -> None:
        """Turn a trace's state into its record: store, write, queue, report. Synchronous,
        so it also runs while the task is being cancelled."""
        cfg = self.config
        confs = st.confs.array()
        text, reasoning = st.text.value(), st.reasoning.value()
        metrics = None
        if confs.size:
            c = cfg.confidence
            metrics = trace_metrics(confs, c.window, c.tail, c.bottom_fraction)
        answer = None
        if st.status is not TraceStatus.FAILED:
            # The final answer sits in the content; reasoning-only outputs keep it there.
            answer = extract_answer(text, cfg.answer)
            if answer is None and reasoning:
                answer = extract_answer(reasoning, cfg.answer)
        assert st.status is not None
        record = TraceRecord(
            index=st.index,
            phase=st.phase,
            status=st.status,
            tokens=st.tokens,
            token_confs=confs,
            text=text,
            reasoning=reasoning,
            answer=answer,
            metrics=metrics,
            finish_reason=st.finish_reason,
            error=str(st.error) if st.error is not None else None,
            server_tokens=st.server_tokens,
            seed=st.seed,
            pruned_at=st.pruned_at,
            elapsed=time.monotonic() - st.started,
            threshold=st.threshold,
        )
        self.records.append(record)
        self.counts[record.status] += 1
        if st.error is not None:
            self._errors[record.index] = st.error
        if self.writer is not None:
            self.writer.write(record)
        self.done.put_nowait(record)
        self._progress()

    # -- votes, result and progress -----------------------------------------------------

    def finished(self) -> list[TraceRecord]:
        """Traces that ran to their natural end (completed or truncated), by index."""
        return sorted((r for r in self.records if r.finished), key=lambda r: r.index)

    def majority(self) -> VoteTable:
        """Plain majority over the traces that ran to their natural end."""
        return vote([r.answer for r in self.finished()], keys=self.keys)

    def result(self, table: VoteTable, methods: dict[str, str | None], empty: str) -> SolveResult:
        """Assemble the result from the final vote; `empty` says why the vote could be
        empty, for the fallback sentence."""
        fallback = None
        finished = self.finished()
        if not table.rows:
            table = self.majority()
            if table.rows:
                fallback = (
                    f"{empty}, so the answer is plain majority over the {len(finished)}"
                    " traces that ran to completion."
                )
            else:
                fallback = f"{empty}, and no trace that ran to completion gave an answer."
        # What plain majority over the same budget would spend, estimated from the traces
        # that were not cut short (a pruned trace's full length is unknown).
        estimate = None
        if finished:
            estimate = float(np.mean([r.tokens for r in finished])) * self.config.budget
        traces = sorted(self.records, key=lambda r: r.index)
        return SolveResult(
            answer=table.leader,
            votes=list(table.rows),
            beta=table.beta,
            threshold=self.threshold,
            tokens=TokenTotals.of(traces),
            wall_time=0.0,  # set by run()
            traces=traces,
            stop_reason=self.stop_reason or "budget",
            fallback=fallback,
            methods=methods,
            mode=self.config.mode,
            variant=self.config.variant,
            budget=self.config.budget,
            tokens_majority_estimate=estimate,
            unjudged_answers=self.keys.unjudged,
        )

    def tally(self, _record: TraceRecord | None = None) -> None:
        """Before any confidence vote (warm-up, offline generation), show plain majority over
        the traces finished so far as the leader: the live view's provisional answer. The
        answer itself still comes from the vote taken when the phase ends."""
        self.table = self.majority()
        self._progress()

    def revote(self, voters: list[TraceRecord], weights: list[float]) -> VoteTable:
        """Recount the weighted vote of `voters` (weights: the policy's, one per voter)."""
        self.table = vote([r.answer for r in voters], weights, keys=self.keys)
        self._progress()
        return self.table

    def _progress(self, *, throttled: bool = False) -> None:
        if self.on_progress is None or self._progress_broken:
            return
        now = time.monotonic()
        if throttled and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        c = self.counts
        snapshot = Progress(
            phase=self.phase,
            in_flight=self.next_index - len(self.records),  # launched, not yet recorded
            completed=c[TraceStatus.COMPLETED],
            pruned=c[TraceStatus.PRUNED],
            failed=c[TraceStatus.FAILED],
            cancelled=c[TraceStatus.CANCELLED],
            truncated=c[TraceStatus.TRUNCATED],
            threshold=self.threshold,
            leader=self.table.leader,
            beta=self.table.beta,
            tokens=self.tokens,
            launched=self.next_index,
            budget=self.config.budget,
            token_budget=self.config.token_budget,
        )
        try:
            self.on_progress(snapshot)
        except Exception:
            # A broken live view must not throw away a solve that may have cost hours of
            # GPU time: log it once and stop calling it.
            log.exception("on_progress raised; progress reporting is switched off")
            self._progress_broken = True


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _unfinished(st: _TraceState) -> StreamError | None:
    """Why a stream that ended without an error still cannot count, or None. A trace counts
    only what arrived with a finish reason, and a trace with no scored token has no
    confidence to vote with (backends check the details; this holds for every backend)."""
    if st.finish_reason is None:
        return StreamError(
            f"the stream ended after {st.tokens} tokens without a finish reason: the backend"
            " cut the trace short, so it is not counted"
        )
    if st.tokens == 0:
        return StreamError(
            f"the stream ended (finish reason {st.finish_reason!r}) before any token with"
            " logprobs arrived: there is nothing to score, so the trace is not counted"
        )
    return None


# What to do next, by the kind of failure that stopped a solve.
_ADVICE: list[tuple[type[BackendError], str]] = [
    (CapabilityError, "Fix the server's logprobs as the error says, then retry."),
    (
        RateLimitedError,
        "The server kept rate limiting: lower --concurrency or set --rps.",
    ),
    (ConnectError, "The server is unreachable: start it or fix --base-url, then retry."),
    (ServerError, "The server keeps failing (HTTP 5xx): its log says why."),
    (RequestRejectedError, "The server refuses the request itself: see its reason above."),
    (
        StreamError,
        "Its streams are broken: run `deepconf doctor --base-url URL` to see what it sends.",
    ),
]


def give_up(streak: list[BackendError]) -> BackendError:
    """The error that ends a solve after a streak of failed traces: the first error, and
    advice for the most common kind in the streak."""
    kinds = [next((k for k, _ in _ADVICE if isinstance(e, k)), BackendError) for e in streak]
    common = max(set(kinds), key=kinds.count)
    advice = dict(_ADVICE).get(common, "See the error above, then retry.")
    lead = "a trace failed" if len(streak) == 1 else f"{len(streak)} traces failed in a row"
    first = str(streak[0]).rstrip(".")
    message = f"{lead}, so deepconf gave up; the first error was: {first}. {advice}"
    # The first error's type travels on, so `serve` answers 429 / 502 as the cause deserves.
    if isinstance(streak[0], RateLimitedError):
        return RateLimitedError(message, streak[0].retry_after)
    return type(streak[0])(message)
