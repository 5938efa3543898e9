"""The `deepconf eval` and `deepconf plot` commands, and the report files both write.

    deepconf eval --dataset chain:difficulty=s6d2,count=100 --budget 32 --output out/
    deepconf eval --dataset aime25.jsonl --base-url http://localhost:8000/v1 --budget 512 \\
        --prompt-template "{problem}\\nPut the final answer in \\boxed{{}}." --output aime/
    deepconf plot out/
    deepconf eval --dataset aime25.jsonl ... --shard 1/2 --output s1/   # see eval/shards.py
    deepconf eval --dataset aime25.jsonl ... --workers 2 --output aime/  # see eval/workers.py

Registered by deepconf/cli.py as ``app.command("eval")(eval_command)`` etc.; `deepconf replay`
lives in eval/replay_command.py. Parsing and printing only: the work is in eval.runner,
eval.report and eval.plots (plots and their matplotlib import load only when `plot` runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from deepconf.cli_common import (
    Api,
    ApiKey,
    BaseUrl,
    BottomFraction,
    Budget,
    Concurrency,
    MaxEventMb,
    MaxTokens,
    ModelName,
    NoProbe,
    RequestsPerSecond,
    Seed,
    System,
    Tail,
    Tau,
    Temperature,
    Timeout,
    TokenBudget,
    TopLogprobs,
    TopP,
    TraceTimeout,
    Warmup,
    Window,
    backend_from_flags,
    card_note,
    config_and_card,
    console,
    fail,
    model_card_of,
    note,
)
from deepconf.errors import ConfigError, DeepConfError
from deepconf.eval.report import (
    Disagreement,
    MethodSummary,
    Score,
    disagreement_markdown,
    disagreement_table,
    markdown_table,
    method_majority_answers,
    rich_table,
    summarise,
    summarise_disagreements,
    unjudged_markdown,
    unjudged_of,
    unparsed_markdown,
    unparsed_scores,
)


def write_report(
    output: Path,
    scores: list[Score],
    title: str,
    out: Console,
    disagreements: list[Disagreement] | None = None,
    unjudged: list[tuple[str, str, int]] | None = None,
) -> list[MethodSummary]:
    """Print the table, DeepConf against majority and the unparsed answers; save report.md
    and summary.json."""
    rows = summarise(scores)
    out.print(rich_table(rows, title=title))
    if disagreements:
        out.print(disagreement_table(disagreements))
    unparsed = unparsed_scores(scores)
    if unparsed:
        out.print(f"[yellow]{len(unparsed)} grade(s) fell back to string comparison:[/]")
        for s in unparsed[:20]:
            out.print(f"  {s.problem_id} [{s.method}]: {s.answer!r}", highlight=False)
    if unjudged:
        out.print(
            f"[yellow]{len(unjudged)} vote(s) compared answers as plain text (math-verify ran"
            " out of time): see report.md[/]"
        )
    from deepconf.eval.runner import write_atomic

    output.mkdir(parents=True, exist_ok=True)
    write_atomic(
        output / "report.md",
        f"# {title}\n\n"
        + markdown_table(rows)
        + disagreement_markdown(disagreements or [])
        + unparsed_markdown(scores)
        + unjudged_markdown(unjudged or []),
    )
    write_atomic(output / "summary.json", json.dumps([r.to_dict() for r in rows], indent=2))
    return rows


def disagreements_of(results: list[dict[str, Any]]) -> list[Disagreement]:
    """Each method against plain majority over the same traces, graded per run."""
    from deepconf.eval.grading import Grader

    grader = Grader()
    graded = []
    for line in results:
        gold = str(line["gold"])
        for method, answer, majority in method_majority_answers([line]):
            graded.append(
                (
                    method,
                    answer != majority,
                    grader.grade(answer, gold).correct,
                    grader.grade(majority, gold).correct,
                )
            )
    return summarise_disagreements(graded)


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
    view: Console,
    claim: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    from deepconf.eval.runner import read_results, run_eval

    done = read_results(output / "results.jsonl")
    ids = {p.problem_id for p in problems}
    seen = [r for r in done if r["problem_id"] in ids]
    if seen:
        note(
            f"resuming: {len(seen)}/{len(problems)} problems are already done in {output};"
            f" running the other {len(problems) - len(seen)}"
        )
    with _progress_view(view, len(problems), seen) as on_result:
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
                claim=claim,
            )
        finally:
            await backend.aclose()
    return [r for r in results if r["problem_id"] in ids]


def _eval_workers(
    ctx: typer.Context,
    workers: list[Any],
    problems: list,
    manifest: dict[str, Any],
    output: Path,
    view: Console,
) -> list[dict[str, Any]]:
    """`--workers N`: the same progress view as one worker's, fed from the workers' files."""
    from deepconf.eval import workers as running

    seen = running.prepare(workers, output, problems, manifest)
    if seen:
        note(
            f"resuming: {len(seen)}/{len(problems)} problems are already done in {output};"
            f" {len(workers)} workers run the other {len(problems) - len(seen)}"
        )
    with (
        running.workers_running(workers, running.worker_argv(ctx)) as watch,
        _progress_view(view, len(problems), seen) as on_result,
    ):
        watch(on_result)
    return running.merge_into(output, workers)


@contextlib.contextmanager
def _progress_view(
    view: Console, total: int, seen: list[dict[str, Any]]
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield the callback each finished problem goes to: a progress bar on a terminal; on a
    pipe (a log file, CI) one plain line per problem, since a bar redrawn with carriage
    returns reads as garbage there."""
    if not view.is_terminal:

        def line(result: dict[str, Any]) -> None:
            seen.append(result)
            view.print(f"eval {len(seen)}/{total}  {_running_accuracy(seen)}", highlight=False)

        yield line
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[acc]}"),
        console=view,
        transient=False,
    ) as progress:
        task = progress.add_task(
            "eval", total=total, completed=len(seen), acc=_running_accuracy(seen) if seen else ""
        )

        def bar(result: dict[str, Any]) -> None:
            seen.append(result)
            progress.update(task, advance=1, acc=_running_accuracy(seen))

        yield bar


def _family_note(backend: Any, problems: list, card: dict[str, Any]) -> str | None:
    """A note when the bundled model gets prompts outside its task family (a prompt template
    around a chain problem is enough): it answers them with nonsense, and a score of 0%
    would otherwise look like a finding about DeepConf."""
    from deepconf.eval import task_chain

    if card.get("task") != task_chain.TASK_ID or not problems:
        return None
    outside = [p for p in problems if not task_chain.in_family(p.prompt)]
    if not outside:
        return None
    return (
        f"{len(outside)} of {len(problems)} prompts are outside the bundled model's task family"
        f" (chains of additions and subtractions), e.g. {outside[0].prompt[:80]!r}: its"
        " answers to them mean nothing. Drop --prompt-template for the built-in chain task,"
        " or point --base-url at a real model"
    )


def eval_command(
    ctx: typer.Context,
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
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Only shard I of N: the problems at positions I, I+N, I+2N, ... (1-based) of"
            " the dataset, e.g. 2/4 on the second of four machines; join the --output folders"
            " with `deepconf eval-merge`.",
        ),
    ] = None,
    max_traces: Annotated[
        int, typer.Option("--max-traces", help="Traces streaming at once, over all problems.")
    ] = 64,
    claims: Annotated[
        Path | None,
        # Set by --workers for its workers (eval/workers.py Claims): after this shard's
        # problems, take the node's others not yet claimed in this folder.
        typer.Option("--claims", hidden=True),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", help="Problems in progress at once (per worker).")
    ] = 4,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Worker processes, one per core: each runs a shard into OUTPUT/.workers/ with"
            " a share of --max-traces; merged into OUTPUT at the end.",
        ),
    ] = 1,
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
    tail: Tail = None,
    bottom_fraction: BottomFraction = None,
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

    err = console(stderr=True)
    try:
        if prompt_template is not None:
            prompt_template = template_from_cli(prompt_template)
        problems = load_dataset(dataset, prompt_template)
        if limit is not None:
            if limit < 1:
                raise ConfigError(f"--limit must be at least 1, got {limit}")
            problems = problems[:limit]
        part = None
        if workers != 1:
            from deepconf.eval.workers import split_limit

            split_limit(max_traces, workers)  # refuse a bad count before any work
        every = problems
        if shard is not None:
            from deepconf.eval.shards import Shard

            part = Shard.parse(shard)
            problems = part.select(problems)
        if claims is not None and (part is None or workers != 1):
            raise ConfigError("--claims is for the workers of eval --workers: leave it out")
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
        card, source = model_card_of(backend, base_url, model, api_key, timeout)
        config, from_card = config_and_card(
            card,
            budget=budget,
            token_budget=token_budget,
            warmup=warmup,
            window=window,
            tail=tail,
            bottom_fraction=bottom_fraction,
            tau=tau,
            top_logprobs=top_logprobs,
            concurrency=concurrency,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            system=system,
        )
        if said := card_note(from_card, source):
            note(said)
        if outside := _family_note(backend, problems, card):
            note(outside)
        shard_name = None if part is None else str(part)
        manifest = manifest_of(dataset, prompt_template, chosen, config, shard=shard_name)
        check_manifest(output, manifest)
        if part is not None:
            from deepconf.eval.shards import record_shard

            record_shard(output, part, problems)
        claim = None
        if claims is not None and part is not None:
            from deepconf.eval.workers import Claims

            problems = Claims(claims).order(every, part)
            claim = Claims(claims).take
        if workers > 1:
            from deepconf.eval.workers import plan_workers

            plan = plan_workers(output, workers, max_traces, part)
            unsharded = {k: v for k, v in manifest.items() if k != "shard"}
            results = _eval_workers(ctx, plan, problems, unsharded, output, err)
        else:
            if (output / ".workers").is_dir():
                note(
                    f"{output / '.workers'} holds the folders of an unfinished --workers run:"
                    " one worker neither uses nor removes them; rerun with that --workers to"
                    " finish and merge them"
                )
            results = asyncio.run(
                _eval_main(
                    backend, problems, config, chosen, output, max_traces, parallel, err, claim
                )
            )
        title = f"{dataset}: {len(results)} problems, budget {config.budget}"
        write_report(
            output,
            scores_of(results),
            title,
            console(),
            disagreements_of(results),
            unjudged_of(results),
        )
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        if workers > 1:
            raise fail(
                "interrupted; rerun the same command to resume (the workers were stopped; the"
                f" problems they finished are kept in {output / '.workers'})",
                code=130,
            ) from None
        raise fail(
            f"interrupted: the problems that finished are saved in {output / 'results.jsonl'};"
            " rerun the same command to resume",
            code=130,
        ) from None
    err.print(f"results: {output / 'results.jsonl'}; traces: {output / 'traces'}")


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
