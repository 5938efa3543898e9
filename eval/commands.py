"""The `deepconf eval`, `deepconf replay` and `deepconf plot` commands.

    deepconf eval --dataset chain:difficulty=s6d2,count=100 --budget 32 --output out/
    deepconf eval --dataset aime25.jsonl --base-url http://localhost:8000/v1 --budget 512 \\
        --prompt-template "{problem}\\nPut the final answer in \\boxed{{}}." --output aime/
    deepconf replay out/ --eta 10,90 --tau 0.9,0.95 --warmup 8,16 --budget 32
    deepconf plot out/

Registered by deepconf/cli.py as ``app.command("eval")(eval_command)`` etc. Parsing and
printing only: the work is in eval.runner, eval.replay, eval.report and eval.plots (plots and
their matplotlib import load only when `plot` runs).
"""

from __future__ import annotations

import asyncio
import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from deepconf.cli_common import (
    Api,
    ApiKey,
    BaseUrl,
    Budget,
    Concurrency,
    MaxEventMb,
    MaxTokens,
    ModelName,
    NoProbe,
    RequestsPerSecond,
    Seed,
    System,
    Tau,
    Temperature,
    Timeout,
    TokenBudget,
    TopLogprobs,
    TopP,
    TraceTimeout,
    Warmup,
    Window,
    backend_defaults,
    backend_from_flags,
    config_from_flags,
    fail,
    note,
)
from deepconf.errors import ConfigError, DeepConfError
from deepconf.eval.report import (
    MethodSummary,
    Score,
    markdown_table,
    rich_table,
    summarise,
    unparsed_markdown,
    unparsed_scores,
)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"{flag} takes a comma list of numbers, e.g. 10,90; got {text!r}"
        ) from exc


def write_report(
    output: Path, scores: list[Score], title: str, console: Console
) -> list[MethodSummary]:
    """Print the table and the unparsed answers; save report.md and summary.json."""
    rows = summarise(scores)
    console.print(rich_table(rows, title=title))
    unparsed = unparsed_scores(scores)
    if unparsed:
        console.print(f"[yellow]{len(unparsed)} grade(s) fell back to string comparison:[/]")
        for s in unparsed[:20]:
            console.print(f"  {s.problem_id} [{s.method}]: {s.answer!r}", highlight=False)
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.md").write_text(
        f"# {title}\n\n" + markdown_table(rows) + unparsed_markdown(scores), encoding="utf-8"
    )
    (output / "summary.json").write_text(
        json.dumps([r.to_dict() for r in rows], indent=2), encoding="utf-8"
    )
    return rows


# --- eval ------------------------------------------------------------------------------------


def _running_accuracy(results: list[dict[str, Any]]) -> str:
    from deepconf.eval.runner import scores_of

    rows = summarise(scores_of(results))
    shown = [r for r in rows if r.method.startswith(("deepconf", "majority"))] or rows[:2]
    return "  ".join(f"{r.method} {r.accuracy:.0%}" for r in shown)


async def _eval_main(
    backend: Any,
    problems: list,
    config: Any,
    methods: list[str],
    output: Path,
    max_traces: int,
    parallel: int,
    console: Console,
) -> list[dict[str, Any]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from deepconf.eval.runner import read_results, run_eval

    done = read_results(output / "results.jsonl")
    ids = {p.problem_id for p in problems}
    seen = [r for r in done if r["problem_id"] in ids]
    with Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[acc]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(
            "eval",
            total=len(problems),
            completed=len(seen),
            acc=_running_accuracy(seen) if seen else "",
        )

        def on_result(line: dict[str, Any]) -> None:
            seen.append(line)
            progress.update(task, advance=1, acc=_running_accuracy(seen))

        try:
            results = await run_eval(
                backend,
                problems,
                config,
                methods,
                output,
                max_traces=max_traces,
                parallel=parallel,
                on_result=on_result,
            )
        finally:
            await backend.aclose()
    return [r for r in results if r["problem_id"] in ids]


def eval_command(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            help="A built-in task (chain:difficulty="
            "s6d2,count=100,seed=0) or a .jsonl/.json/.csv/.parquet file with problem"
            " (or question/prompt) and answer fields.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", help="Results folder; rerun to resume.")
    ] = Path("deepconf-eval"),
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma list: pass@1, majority, offline"
            " (all offline DeepConf methods) or one like tail@10, online-low,"
            " online-high.",
        ),
    ] = "pass@1,majority,offline,online-low,online-high",
    prompt_template: Annotated[
        str | None,
        typer.Option(
            "--prompt-template",
            help="Prompt with {problem}; \\n is a newline; double literal braces: '\\boxed{{}}'.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N problems.")] = None,
    max_traces: Annotated[
        int, typer.Option("--max-traces", help="Traces streaming at once, over all problems.")
    ] = 64,
    parallel: Annotated[int, typer.Option("--parallel", help="Problems in progress at once.")] = 4,
    base_url: BaseUrl = None,
    model: ModelName = None,
    api: Api = "chat",
    api_key: ApiKey = None,
    rps: RequestsPerSecond = None,
    timeout: Timeout = 600.0,
    trace_timeout: TraceTimeout = None,
    no_probe: NoProbe = False,
    max_event_mb: MaxEventMb = 16.0,
    budget: Budget = None,
    token_budget: TokenBudget = None,
    warmup: Warmup = None,
    window: Window = None,
    tau: Tau = None,
    top_logprobs: TopLogprobs = None,
    concurrency: Concurrency = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    system: System = None,
) -> None:
    """Evaluate methods on a dataset: accuracy, tokens and savings per method (paper Table 10)."""
    from deepconf.eval.datasets import load_dataset, template_from_cli
    from deepconf.eval.runner import check_manifest, manifest_of, parse_methods, scores_of

    console = Console(stderr=True)
    try:
        if prompt_template is not None:
            prompt_template = template_from_cli(prompt_template)
        problems = load_dataset(dataset, prompt_template)
        if limit is not None:
            if limit < 1:
                raise ConfigError(f"--limit must be at least 1, got {limit}")
            problems = problems[:limit]
        chosen = parse_methods(methods)
        backend = backend_from_flags(
            base_url,
            model,
            api,
            api_key,
            rps,
            timeout,
            top_logprobs,
            trace_timeout=trace_timeout,
            probe=not no_probe,
            max_event_mb=max_event_mb,
        )
        config = config_from_flags(
            defaults=backend_defaults(backend),
            budget=budget,
            token_budget=token_budget,
            warmup=warmup,
            window=window,
            tau=tau,
            top_logprobs=top_logprobs,
            concurrency=concurrency,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            system=system,
        )
        check_manifest(output, manifest_of(dataset, prompt_template, chosen, config))
        results = asyncio.run(
            _eval_main(backend, problems, config, chosen, output, max_traces, parallel, console)
        )
        title = f"{dataset}: {len(results)} problems, budget {config.budget}"
        write_report(output, scores_of(results), title, Console())
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    console.print(f"results: {output / 'results.jsonl'}; traces: {output / 'traces'}")


# --- replay ----------------------------------------------------------------------------------


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
    from deepconf.eval.datasets import load_answers
    from deepconf.eval.replay import load_pools, online_grid, replay_scores
    from deepconf.eval.runner import parse_methods
    from deepconf.voting import OFFLINE_METHODS

    console = Console()
    try:
        files, eval_dir = _trace_files(traces)
        source = answers or (str(eval_dir) if eval_dir else None)
        if source is None:
            raise ConfigError("no gold answers: pass --answers (an eval folder or dataset spec)")
        golds = load_answers(source)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pools = load_pools(files)
        for w in caught:
            note(str(w.message))
        offline = [m for m in parse_methods(methods) if m in OFFLINE_METHODS]
        smallest = min(len(p) for p in pools.values())
        b = budget if budget is not None else smallest
        if b > smallest:
            note(
                f"--budget {b} exceeds the smallest pool ({smallest} traces):"
                " those problems use their whole pool"
            )
        warmups = [int(w) for w in _floats(warmup, "--warmup")]
        grid = online_grid(_floats(eta, "--eta"), _floats(tau, "--tau"), warmups, b, token_budget)
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
        title = f"replay: {len(pools)} problems, budget {b}, {repeats} orders each"
        if output is None:
            console.print(rich_table(summarise(scores), title=title))
        else:
            write_report(output, scores, title, console)
            with (output / "scores.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(s.to_dict()) + "\n" for s in scores)
    except DeepConfError as exc:
        raise fail(str(exc)) from None


# --- plot ------------------------------------------------------------------------------------


def plot_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="An eval --output folder (or a replay --output folder, for the accuracy plot).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the PNGs (default: SOURCE/plots).")
    ] = None,
    problem: Annotated[
        str | None,
        typer.Option("--problem", help="Problem id whose traces to draw (default: the first)."),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="Trace metric of the histogram.")
    ] = "lowest",
) -> None:
    """Draw PNGs: confidence per trace, confidence histograms, accuracy against tokens."""
    from deepconf.eval.plots import draw_all

    try:
        made = draw_all(source, out or source / "plots", problem=problem, metric=metric)
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    for path in made:
        typer.echo(str(path))
