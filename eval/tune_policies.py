"""Issue 12, item 4: tune a policy on the validation split, measure it on held-out test.

    python -m deepconf.eval.tune_policies record --split validation --count 60 --out runs/val
    python -m deepconf.eval.tune_policies measure --validation runs/val --test runs/test

`record` solves chain problems of one split with the bundled model in offline mode (every
trace runs to its end, `--budget` of them, trace i of problem j seeded seed + 1000 j + i) and
writes traces/<problem>.offline.jsonl and gold.jsonl: the pools replay needs.
`measure` replays every policy at its defaults and every named sweep (eval.compare) on the
validation pools, picks the policy the criterion below prefers, then replays all of them on
the test pools (an eval --output folder works too) over the same number of orders, and says
whether the pick meets the criterion there:

    tokens <= (1 - 0.60) x majority@N's  and  accuracy >= majority@N's - 1 point

Pick rule on validation: among the policies meeting the criterion, the most accurate (then
the cheapest); if none does, the most accurate of those within the token bar, and it is
reported as not meeting it. Nothing here changes `deepconf solve`'s default.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from deepconf.eval.compare import (
    SWEEPS,
    PolicyRow,
    compare_policies,
    comparison_markdown,
    default_policies,
    sweep_policies,
)

TOKEN_SAVING = 0.60
ACCURACY_SLACK = 0.01
SEED_STRIDE = 1000  # problem j's traces use seeds seed + 1000 j + i, i < budget < 1000


def meets(row: PolicyRow, majority: PolicyRow) -> bool:
    return (
        row.tokens <= (1 - TOKEN_SAVING) * majority.tokens
        and row.accuracy >= majority.accuracy - ACCURACY_SLACK
    )


def pick(rows: Sequence[PolicyRow]) -> tuple[PolicyRow, bool]:
    """The validation pick (see the module docstring) and whether it meets the criterion."""
    majority = next(r for r in rows if r.policy == "majority")
    good = [r for r in rows if meets(r, majority)]
    if good:
        return max(good, key=lambda r: (r.accuracy, -r.tokens)), True
    cheap = [r for r in rows if r.tokens <= (1 - TOKEN_SAVING) * majority.tokens] or list(rows)
    return max(cheap, key=lambda r: (r.accuracy, -r.tokens)), False


def record(split: str, difficulty: str, count: int, budget: int, seed: int, out: Path) -> None:
    from deepconf import solve
    from deepconf.backends.bundled import BundledBackend
    from deepconf.eval import task_chain

    backend = BundledBackend()
    drawn = task_chain.problems(task_chain.Difficulty.parse(difficulty), count, split=split)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    golds = []
    for j, p in enumerate(drawn):
        path = out / "traces" / f"{j:04d}.offline.jsonl"
        if not path.exists():
            solve(
                p.expression,
                backend=backend,
                mode="offline",
                budget=budget,
                trace_path=path.with_suffix(".part"),
                problem_id=p.problem_id,
                sampling={"seed": seed + SEED_STRIDE * j},
            )
            path.with_suffix(".part").rename(path)  # a killed run leaves no half pool
        golds.append({"problem_id": p.problem_id, "answer": str(p.answer)})
        print(f"{j + 1}/{count} {p.problem_id}", flush=True)
    (out / "gold.jsonl").write_text("".join(json.dumps(g) + "\n" for g in golds))


def _pools(folder: Path) -> tuple[dict, dict[str, str]]:
    from deepconf.eval.datasets import load_answers
    from deepconf.eval.replay import load_pools
    from deepconf.eval.samples import load_gold_file

    files = sorted((folder / "traces").glob("*.offline.jsonl"))
    pools = load_pools(files)
    gold = folder / "gold.jsonl"
    golds = load_gold_file(str(gold)) if gold.exists() else load_answers(str(folder))
    return {k: v for k, v in pools.items() if k in golds}, golds


def measure(validation: Path, test: Path, budget: int, orders: int, seed: int) -> None:
    policies = default_policies(answer_only=False) + sweep_policies(list(SWEEPS), answer_only=False)
    val_pools, val_golds = _pools(validation)
    val = compare_policies(val_pools, val_golds, policies, budget=budget, repeats=orders, seed=seed)
    chosen, ok = pick(val)
    print(f"## validation: {len(val_pools)} problems, {orders} orders\n")
    print(comparison_markdown(val, budget))
    print(f"\npick: {chosen.policy} ({'meets' if ok else 'does not meet'} the criterion)\n")
    test_pools, test_golds = _pools(test)
    rows = compare_policies(
        test_pools, test_golds, policies, budget=budget, repeats=orders, seed=seed + 1
    )
    print(f"## test: {len(test_pools)} problems, {orders} orders\n")
    print(comparison_markdown(rows, budget))
    majority = next(r for r in rows if r.policy == "majority")
    mine = next(r for r in rows if r.policy == chosen.policy)
    verdict = "meets" if meets(mine, majority) else "does not meet"
    print(
        f"\ntest: {mine.policy} {mine.accuracy:.2%} at {mine.delta_tokens:+.1%} tokens vs"
        f" majority@{budget} {majority.accuracy:.2%}: {verdict} the criterion"
        f" (>= {TOKEN_SAVING:.0%} fewer tokens, accuracy >= majority - {ACCURACY_SLACK:.0%})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="Record offline pools of one split.")
    rec.add_argument("--split", choices=["validation", "test"], default="validation")
    rec.add_argument("--difficulty", default="s4d3")
    rec.add_argument("--count", type=int, default=60)
    rec.add_argument("--budget", type=int, default=64)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--out", type=Path, required=True)
    mea = sub.add_parser("measure", help="Tune on validation, measure on test.")
    mea.add_argument("--validation", type=Path, required=True)
    mea.add_argument("--test", type=Path, required=True)
    mea.add_argument("--budget", type=int, default=64)
    mea.add_argument("--orders", type=int, default=64)
    mea.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.split, args.difficulty, args.count, args.budget, args.seed, args.out)
    else:
        measure(args.validation, args.test, args.budget, args.orders, args.seed)


if __name__ == "__main__":
    main()
