"""The README quickstart's claims, measured: one problem, many seeds, DeepConf against majority.

    python -m deepconf.eval.quickstart                       # the README's problem, 40 seeds
    python -m deepconf.eval.quickstart --problem "Compute 958+672-205-968-157." --runs 20

Each run is exactly `deepconf solve PROBLEM --seed S` (online DeepConf-low, the bundled model,
the settings of its model card), through the Python API, which fills the same settings the
CLI does. Run r uses seed first_seed + 1000 r, so no two runs share a trace seed (trace i of a
run uses seed + i, and budgets stay below 1000). For every run it prints DeepConf's answer and
plain majority's over the same traces (the traces of that run that ran to their end), then how
often each was right, how often they disagreed and who was right then, and the tokens spent.
The README states these figures; rerun this to check them. Nothing here is random beyond the
seeds: the same seeds give the same figures on any machine with the same model file (up to
float noise, which the tie rule in deepconf.voting makes irrelevant to the votes).

How the README's problem was picked (not by hope): 60 held-out test problems (s3d3, s4d3 and
s5d3, 20 each) got 256 traces each, online DeepConf-low and majority were replayed over 200
random orders of them (deepconf.eval.replay), and the problem where DeepConf beat majority by
the widest margin was then measured live here.

Not here: the CLI (deepconf/cli.py) or any change to the settings (deepconf/model_settings.py).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

from deepconf.errors import ConfigError

# The README's first command. Chosen by measurement (see the module docstring).
README_PROBLEM = "Compute 216+973+738-425-756-352."
RUN_SEED_STRIDE = 1000


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One `deepconf solve` run: its answer, plain majority's over the same traces, tokens."""

    seed: int
    deepconf: str | None
    majority: str | None
    tokens: int
    traces: int
    pruned: int
    stop_reason: str


def gold_of(problem: str) -> str:
    """The exact answer of a chain-arithmetic problem, computed, not sampled."""
    from deepconf.eval.task_chain import parse_prompt

    parsed = parse_prompt(problem)
    if parsed is None:
        raise ConfigError(
            f"{problem!r} is not a chain-arithmetic problem the bundled model knows: give one"
            " like 'Compute 48+75-29+63.' (one to three digits, all of one width)"
        )
    return str(parsed.answer)


def run_once(problem: str, seed: int, backend: Any, **settings: Any) -> RunOutcome:
    """One online solve with the model card's settings, as `deepconf solve --seed` runs it."""
    from deepconf import solve
    from deepconf.trace import TraceStatus

    result = solve(problem, backend=backend, sampling={"seed": seed}, **settings)
    return RunOutcome(
        seed=seed,
        deepconf=result.answer,
        majority=result.majority,
        tokens=result.tokens.total,
        traces=len(result.traces),
        pruned=result.count(TraceStatus.PRUNED),
        stop_reason=result.stop_reason,
    )


def summary_lines(problem: str, gold: str, runs: list[RunOutcome]) -> list[str]:
    """The figures the README quotes, as sentences."""
    n = len(runs)
    dc = sum(r.deepconf == gold for r in runs)
    mj = sum(r.majority == gold for r in runs)
    split = [r for r in runs if r.deepconf != r.majority]
    split_dc = sum(r.deepconf == gold for r in split)
    split_mj = sum(r.majority == gold for r in split)
    tokens = [r.tokens for r in runs]
    consensus = sum(r.stop_reason == "consensus" for r in runs)
    return [
        f"problem: {problem}  (right answer {gold}); {n} runs, seeds {runs[0].seed},"
        f" {runs[0].seed + RUN_SEED_STRIDE}, ... {runs[-1].seed}",
        f"DeepConf-low right: {dc}/{n} ({dc / n:.0%})",
        f"plain majority over the same traces right: {mj}/{n} ({mj / n:.0%})",
        f"they disagreed in {len(split)} runs: DeepConf right in {split_dc}, majority in"
        f" {split_mj}",
        f"tokens per run: mean {statistics.mean(tokens):,.0f} (min {min(tokens):,}, max"
        f" {max(tokens):,}); traces per run: mean {statistics.mean(r.traces for r in runs):.1f},"
        f" pruned {statistics.mean(r.pruned for r in runs):.1f}; stopped at consensus in"
        f" {consensus}/{n}",
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m deepconf.eval.quickstart", description=__doc__)
    ap.add_argument("--problem", default=README_PROBLEM)
    ap.add_argument("--runs", type=int, default=40, help="seeds to run (at least 20)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--variant", default="low", help="low (the CLI default) or high")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    from deepconf.backends.bundled import BundledBackend

    gold = gold_of(args.problem)
    backend = BundledBackend()
    runs: list[RunOutcome] = []
    print(f"{'seed':>6}  {'DeepConf':>9}  {'majority':>9}  {'tokens':>7}  {'traces':>6}  pruned")
    for r in range(args.runs):
        seed = args.first_seed + RUN_SEED_STRIDE * r
        out = run_once(args.problem, seed, backend, variant=args.variant)
        runs.append(out)
        mark = "" if out.deepconf == out.majority else "  <- disagree"
        print(
            f"{seed:>6}  {out.deepconf!s:>9}  {out.majority!s:>9}  {out.tokens:>7,}"
            f"  {out.traces:>6}  {out.pruned:>6}{mark}",
            flush=True,
        )
    print()
    for line in summary_lines(args.problem, gold, runs):
        print(line)


if __name__ == "__main__":
    main()
