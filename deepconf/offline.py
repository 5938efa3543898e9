"""Offline DeepConf: the paper's Algorithm 1, with every voting method reported.

    1. generate `budget` traces with no pruning (failed ones replaced)
    2. compute every trace metric (mean, tail, bottom, lowest)
    3. vote by every method: majority, each metric weighted, and each metric after keeping
       the top 10% / 90% of traces by it (deepconf.voting.method_vote)
    4. answer with `config.offline_method` (default tail@10, the paper's headline)

Traces that ran to their end vote, truncated ones included (as online); there is no
prune threshold, so `SolveResult.threshold` is None.

    result = await run_offline(SolveRun(backend, config.model_copy(update={"mode": "offline"}), p))
"""

from __future__ import annotations

from deepconf.controller import SolveRun
from deepconf.result import SolveResult
from deepconf.voting import OFFLINE_METHODS, VoteTable, method_vote


async def run_offline(run: SolveRun) -> SolveResult:
    cfg = run.config
    await run.generate("offline", cfg.budget, threshold=None, on_finish=run.tally)
    voters = [r for r in run.finished() if r.metrics is not None]
    answers = [r.answer for r in voters]
    metrics = [r.metrics for r in voters if r.metrics is not None]
    tables: dict[str, VoteTable] = {
        m: method_vote(m, answers, metrics, run.keys) for m in OFFLINE_METHODS
    }
    run.table = tables[cfg.offline_method]  # config allows only these (METHOD_PATTERN)
    methods = {m: t.leader for m, t in tables.items()}
    empty = f"The {cfg.offline_method} vote is empty"
    result = run.result(run.table, methods, empty)
    result.majority_votes = list(tables["majority"].rows)
    result.offline_method = cfg.offline_method
    return result
