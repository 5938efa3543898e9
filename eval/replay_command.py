"""The `deepconf replay` command: recorded traces, replayed under other settings.

    deepconf replay out/ --eta 10,90 --tau 0.9,0.95 --warmup 8,16 --budget 32
    deepconf replay traces.jsonl --gold 394          # a `solve --save-traces` file
    deepconf replay samples.jsonl --answers gold.jsonl --budget 64 --sweep esc,beta
                                                     # answer-only samples (eval.samples)

Besides the swept DeepConf settings, it prints one comparison table: every policy that
applies (deepconf.policies) at its defaults, plus the named sweeps (eval.compare).

Registered by deepconf/cli.py. Parsing and printing only: the simulation is eval.replay, the
gold answers come from eval.datasets or --gold, the tables from eval.report.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from deepconf.cli_common import TokenBudget, console, fail, note
from deepconf.errors import ConfigError, DeepConfError
from deepconf.eval.commands import write_report
from deepconf.eval.report import rich_table, summarise


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"{flag} takes a comma list of numbers, e.g. 10,90; got {text!r}"
        ) from exc


def _trace_files(paths: list[Path]) -> tuple[list[Path], Path | None]:
    """Trace files from files and folders (an eval folder: its traces/*.offline.jsonl), and
    the eval folder found, if any (its results.jsonl holds the gold answers)."""
    files, eval_dir = [], None
    for p in paths:
        if p.is_dir():
            if (p / "results.jsonl").exists():
                eval_dir = eval_dir or p
            found = sorted((p / "traces").glob("*.offline.jsonl")) or sorted(p.glob("*.jsonl"))
            if not found:
                raise ConfigError(f"{p} holds no trace files (*.offline.jsonl)")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"trace file {p} does not exist")
    return files, eval_dir


def replay_command(
    traces: Annotated[
        list[Path],
        typer.Argument(
            help="Trace files recorded in offline mode, or eval --output folders.",
            show_default=False,
        ),
    ],
    answers: Annotated[
        str | None,
        typer.Option(
            "--answers",
            help="Gold answers: an eval output"
            " folder or a dataset spec (default: the eval folder given).",
        ),
    ] = None,
    gold: Annotated[
        list[str] | None,
        typer.Option(
            "--gold",
            help="A gold answer given inline: ID=ANSWER (repeat for several), or ANSWER alone"
            " when the traces hold one problem (e.g. a `solve --save-traces` file).",
        ),
    ] = None,
    eta: Annotated[
        str, typer.Option("--eta", help="Keep percents to sweep (10: low, 90: high).")
    ] = "10,90",
    tau: Annotated[str, typer.Option("--tau", help="Consensus thresholds to sweep.")] = "0.95",
    warmup: Annotated[str, typer.Option("--warmup", help="Warm-up sizes to sweep.")] = "16",
    budget: Annotated[
        int | None, typer.Option("--budget", help="Trace budget (default: the smallest pool).")
    ] = None,
    token_budget: TokenBudget = None,
    window: Annotated[
        int | None, typer.Option("--window", help="Group window (default: as recorded).")
    ] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Offline methods to report.")
    ] = "majority,offline",
    sweep: Annotated[
        str,
        typer.Option(
            "--sweep",
            help="Policy sweeps added to the comparison table: tau, esc, beta, dirichlet,"
            " beta-z, deepconf (comma list).",
        ),
    ] = "",
    repeats: Annotated[
        int, typer.Option("--repeats", help="Random trace orders per problem.")
    ] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the resampling.")] = 0,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Save report.md, summary.json and scores.jsonl here."),
    ] = None,
) -> None:
    """Replay recorded traces: offline methods and SIMULATED online DeepConf, resampled."""
    from deepconf.eval.compare import (
        compare_policies,
        comparison_markdown,
        default_policies,
        sweep_policies,
    )
    from deepconf.eval.datasets import load_answers
    from deepconf.eval.replay import load_pools, online_grid, replay_scores
    from deepconf.eval.runner import parse_methods
    from deepconf.eval.samples import (
        is_gold_file,
        is_samples_file,
        load_gold_file,
        load_samples,
    )
    from deepconf.voting import OFFLINE_METHODS

    out = console()
    try:
        files, eval_dir = _trace_files(traces)
        samples = [f for f in files if is_samples_file(f)]
        answer_only = bool(samples)
        if answer_only and len(samples) != len(files):
            raise ConfigError(
                "replay reads trace files or answer-only samples, not both at once: replay"
                " them separately"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pools = load_samples(samples) if answer_only else load_pools(files)
        for w in caught:
            note(str(w.message))
        source = answers or (str(eval_dir) if eval_dir else None)
        if source is None and not gold:
            raise ConfigError(
                "no gold answers: pass --gold ANSWER (or ID=ANSWER), or --answers (an eval"
                " folder or dataset spec)"
            )
        golds: dict[str, str] = {}
        if source is not None:
            golds = load_gold_file(source) if is_gold_file(source) else load_answers(source)
        golds.update(_inline_golds(gold or [], list(pools)))
        offline = [m for m in parse_methods(methods) if m in OFFLINE_METHODS]
        if answer_only:  # samples have no confidences: only the plain count applies
            offline = [m for m in offline if m == "majority"]
        smallest = min(len(p) for p in pools.values())
        b = budget if budget is not None else smallest
        if b > smallest:
            note(
                f"--budget {b} exceeds the smallest pool ({smallest} traces):"
                " those problems use their whole pool"
            )
        warmups = [int(w) for w in _floats(warmup, "--warmup")]
        # Samples replay no DeepConf sweep, so its warm-up sizes do not matter there.
        too_big = [] if answer_only else [w for w in warmups if not 1 <= w <= b]
        if too_big:
            raise ConfigError(
                f"--warmup {too_big[0]} does not fit the trace budget {b} (warm-up traces count"
                f" in it; {'--budget' if budget is not None else 'the smallest pool'} gives"
                f" {b}): use a warm-up from 1 to {b}"
            )
        grid = online_grid(_floats(eta, "--eta"), _floats(tau, "--tau"), warmups, b, token_budget)
        if answer_only:
            grid = []  # DeepConf's threshold needs confidences
        scores = replay_scores(
            pools,
            golds,
            online=grid,
            methods=offline,
            budget=b,
            repeats=repeats,
            seed=seed,
            window=window,
        )
        policies = default_policies(answer_only=answer_only) + sweep_policies(
            [n.strip() for n in sweep.split(",") if n.strip()], answer_only=answer_only
        )
        rows = compare_policies(
            pools,
            golds,
            policies,
            budget=b,
            repeats=repeats,
            seed=seed,
            token_budget=token_budget,
            window=window,
        )
        title = f"replay: {len(pools)} problems, budget {b}, {repeats} orders each"
        comparison = f"policies: {len(pools)} problems, {repeats} orders each (paired)\n\n"
        comparison += comparison_markdown(rows, b)
        if output is None:
            out.print(rich_table(summarise(scores), title=title))
            typer.echo("\n" + comparison)
        else:
            from deepconf.eval.runner import write_atomic

            write_report(output, scores, title, out)
            lines = "".join(json.dumps(s.to_dict()) + "\n" for s in scores)
            write_atomic(output / "scores.jsonl", lines)
            write_atomic(output / "policies.md", comparison + "\n")
            lines = "".join(json.dumps(r.to_dict()) + "\n" for r in rows)
            write_atomic(output / "policies.jsonl", lines)
            typer.echo("\n" + comparison)
    except DeepConfError as exc:
        raise fail(str(exc)) from None


def _inline_golds(given: list[str], problem_ids: list[str]) -> dict[str, str]:
    """--gold values: ID=ANSWER each, or one bare ANSWER for traces of a single problem."""
    golds: dict[str, str] = {}
    for item in given:
        pid, sep, answer = item.rpartition("=")
        if sep and pid:
            golds[pid] = answer
        elif len(problem_ids) == 1:
            golds[problem_ids[0]] = item
        else:
            raise ConfigError(
                f"--gold {item!r} names no problem, and the traces hold {len(problem_ids)}:"
                f" give ID=ANSWER (ids: {', '.join(problem_ids[:5])})"
            )
    return golds
