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

from deepconf.controller import SolveRun
from deepconf.policies import Ended, PolicyRun, policy_for
from deepconf.policies.describe import describe
from deepconf.policies.filters import warmup_threshold
from deepconf.result import SolveResult
from deepconf.trace import TraceRecord, TraceStatus
from deepconf.voting import vote

__all__ = ["run_online", "warmup_threshold"]


async def run_online(run: SolveRun) -> SolveResult:
    cfg = run.config
    empty = "No trace passed the confidence threshold with an answer"
    # Every decision (threshold, who votes, weights, stop) is the policy's; replay drives the
    # same PolicyRun over recorded traces (eval/replay.py).
    decide = PolicyRun(policy_for(cfg), cfg.budget, cfg.confidence.top_logprobs, run.keys)
    records: dict[int, TraceRecord] = {}

    def ended(record: TraceRecord) -> Ended:
        records[record.index] = record
        return Ended(record.index, record.answer, record.metrics, record.finished)

    def revote() -> None:
        run.revote([records[v.index] for v in decide.voters], decide.weights())

    # 1. Warm-up: run to completion, never pruned (an adaptive warm-up may stop it early).
    def on_warmup(record: TraceRecord) -> None:
        run.tally(record)
        if decide.warmup_ended(ended(record)) and run.stop_reason is None:
            run.stop_reason = "consensus"

    await run.generate("warmup", decide.warmup_traces, threshold=None, on_finish=on_warmup)
    if not decide.warm:  # stopped (token budget, failures) before any warm-up trace finished
        run.table = vote([], keys=run.keys)  # the provisional majority is not a vote
        return _with_majority(run, run.result(run.table, _methods(run), empty), decide)

    # 2-3. Threshold from the warm-up's signals; the warm-up traces that pass it seed the vote.
    decide.end_warmup()
    run.threshold = decide.threshold
    revote()

    # 4. Generate further traces until the stop rule or a budget stops us.
    if run.stop_reason is None and decide.stopped:
        run.stop_reason = "consensus"
    if run.stop_reason is None:

        def on_finish(record: TraceRecord) -> None:
            before = len(decide.voters)
            fired = decide.ended(ended(record))
            if len(decide.voters) != before:
                revote()
            if fired and run.stop_reason is None:
                run.stop_reason = "consensus"

        warm_used = sum(
            1 for r in run.records if r.phase == "warmup" and r.status is not TraceStatus.FAILED
        )
        await run.generate(
            "online", cfg.budget - warm_used, threshold=decide.prune_threshold, on_finish=on_finish
        )

    return _with_majority(run, run.result(run.table, _methods(run), empty), decide)


def _with_majority(run: SolveRun, result: SolveResult, decide: PolicyRun) -> SolveResult:
    """The result with plain majority's vote beside DeepConf's (over the same ended traces),
    and the policy that decided, in words."""
    result.majority_votes = list(run.majority().rows)
    result.policy = describe(decide.policy)
    return result


def _methods(run: SolveRun) -> dict[str, str | None]:
    """The confidence vote's answer beside plain majority over the traces that ended."""
    return {"deepconf": run.table.leader, "majority": run.majority().leader}
