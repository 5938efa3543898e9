"""Online DeepConf: the paper's Algorithm 2 (DeepConf-low / DeepConf-high).

    1. warm-up: `warmup` traces run to completion, no pruning
    2. threshold: s = percentile(warm-up lowest-group confidences, 100 - keep_percent)
    3. seed the vote: warm-up traces with lowest >= s and an answer, weighted by lowest
    4. stop if beta >= tau; else stream more traces, each pruned the moment its full-window
       group confidence falls below s; a trace that ends votes if lowest >= s (the offline
       filter); re-check beta after every trace that ends
    5. stop at consensus, at `budget` traces (warm-up included) or at the token budget;
       traces still in flight are cancelled, their tokens counted

Pruned traces never vote; truncated traces (max_tokens reached) vote like completed ones
when they have an answer and pass the filter: they ran unpruned to the end the server gave
them, and the paper's vote set only drops early-stopped traces. Cancelled traces never vote.
With concurrency > 1 the consensus is checked whenever a trace ends, not before each launch,
so a few more traces than the sequential run may be in flight when it stops.

    result = await run_online(SolveRun(backend, config, prompt))
"""

from __future__ import annotations

import bisect

import numpy as np

from deepconf.controller import SolveRun
from deepconf.result import SolveResult
from deepconf.trace import TraceRecord, TraceStatus
from deepconf.voting import tolerant_threshold, vote


def votes_online(record: TraceRecord, threshold: float) -> bool:
    """Whether a trace that ended may vote: it ran to its end, has an answer, and its
    lowest-group confidence passes the threshold (the same filter as offline)."""
    return (
        record.finished
        and record.answer is not None
        and record.metrics is not None
        and record.metrics.lowest >= threshold
    )


def warmup_threshold(lowest: np.ndarray, keep_percent: float) -> float:
    """s = the (100 - keep_percent)th percentile (numpy linear) of warm-up lowest-group
    confidences: DeepConf-low (keep 10%) takes the 90th, DeepConf-high (keep 90%) the 10th;
    lowered by the tie tolerance, so a trace whose confidence equals it up to float noise is
    neither pruned nor filtered out (traces of one prompt share their first windows, and the
    percentile often lands exactly on one of them)."""
    return tolerant_threshold(float(np.percentile(lowest, 100.0 - keep_percent)))


async def run_online(run: SolveRun) -> SolveResult:
    cfg = run.config
    empty = "No trace passed the confidence threshold with an answer"

    # 1. Warm-up: run to completion, never pruned.
    await run.generate("warmup", cfg.warmup, threshold=None, on_finish=run.tally)
    warm = [r for r in run.finished() if r.phase == "warmup" and r.metrics is not None]
    if not warm:  # stopped (token budget, failures) before any warm-up trace finished
        run.table = vote([], keys=run.keys)  # the provisional majority is not a vote
        return _with_majority(run, run.result(run.table, _methods(run), empty))

    # 2. Threshold from the warm-up traces' lowest-group confidences.
    lowest = np.array([r.metrics.lowest for r in warm if r.metrics is not None])
    s = warmup_threshold(lowest, cfg.keep_percent)
    run.threshold = s

    # 3. Seed the vote with the warm-up traces that pass the threshold.
    voters = [r for r in warm if votes_online(r, s)]
    run.revote(voters)

    # 4. Generate further traces until consensus or a budget stops us.
    if run.stop_reason is None and run.table.beta >= cfg.tau:
        run.stop_reason = "consensus"
    if run.stop_reason is None:

        def on_finish(record: TraceRecord) -> None:
            if not votes_online(record, s):
                return
            # Index order, not finish order: the vote's last tie-break is "first seen", and
            # with seeds the index order is the same in every run.
            bisect.insort(voters, record, key=lambda r: r.index)
            if run.revote(voters).beta >= cfg.tau and run.stop_reason is None:
                run.stop_reason = "consensus"

        warm_used = sum(
            1 for r in run.records if r.phase == "warmup" and r.status is not TraceStatus.FAILED
        )
        await run.generate("online", cfg.budget - warm_used, threshold=s, on_finish=on_finish)

    return _with_majority(run, run.result(run.table, _methods(run), empty))


def _with_majority(run: SolveRun, result: SolveResult) -> SolveResult:
    """The result with plain majority's vote beside DeepConf's (over the same ended traces)."""
    result.majority_votes = list(run.majority().rows)
    return result


def _methods(run: SolveRun) -> dict[str, str | None]:
    """The confidence vote's answer beside plain majority over the traces that ended."""
    return {"deepconf": run.table.leader, "majority": run.majority().leader}
