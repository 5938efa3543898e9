"""The `deepconf` command line: the composition root that picks a backend and a config.

    deepconf solve "Compute 37+58-19+64."                         # bundled model, in process
    deepconf solve --base-url http://localhost:8000/v1 --window 2048 --file problem.txt
    deepconf serve-model --port 8001                             # the bundled model over HTTP

Only parsing and printing live here; nothing imports from this module. Expected errors
(`DeepConfError`) become a one-line message and exit code 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from deepconf.cli_common import (
    Api,
    ApiKey,
    BaseUrl,
    Budget,
    Concurrency,
    MaxEventMb,
    MaxTokens,
    Mode,
    ModelName,
    NoProbe,
    OfflineMethod,
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
    Variant,
    Warmup,
    Window,
    backend_defaults,
    backend_from_flags,
    config_from_flags,
    fail,
    note,
)
from deepconf.doctor_command import doctor_command
from deepconf.errors import ConfigError, DeepConfError
from deepconf.eval.commands import eval_command, plot_command, replay_command
from deepconf.serve.command import serve_command

if TYPE_CHECKING:  # annotations only: importing it at start-up would load numpy
    from deepconf.backend import Backend

app = typer.Typer(
    name="deepconf",
    help="DeepConf: many reasoning traces, low-confidence ones pruned early, a confident vote.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _read_prompt(prompt: str | None, file: Path | None) -> str:
    if file is not None:
        if prompt is not None:
            raise ConfigError("give the problem either as PROMPT or with --file, not both")
        try:
            return file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --file {file}: {exc.strerror}") from exc
    if prompt is None:
        raise ConfigError("no problem given: pass PROMPT, '-' to read stdin, or --file PATH")
    if prompt == "-":
        return sys.stdin.read()
    return prompt


# --- live view ------------------------------------------------------------------------------


def _progress_table(p: Any, started: float) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column()
    threshold = "—" if p.threshold is None else f"{p.threshold:.3f}"
    leader = "—" if p.leader is None else str(p.leader)
    table.add_row("phase", str(p.phase))
    table.add_row("traces", f"{p.launched}/{p.budget} launched, {p.in_flight} in flight")
    table.add_row(
        "finished",
        f"{p.completed} completed, {p.pruned} pruned, {p.truncated} truncated, "
        f"{p.cancelled} cancelled, {p.failed} failed",
    )
    table.add_row("threshold", threshold)
    table.add_row("leader", f"{leader}  (beta {p.beta:.2f})")
    table.add_row("tokens", f"{p.tokens:,}  ({time.monotonic() - started:.1f}s)")
    return table


def _summary(console: Console, result: Any) -> None:
    votes = Table(title="votes", show_edge=False)
    votes.add_column("answer")
    votes.add_column("traces", justify="right")
    votes.add_column("weight", justify="right")
    for row in result.votes:
        votes.add_row(str(row.answer), str(row.count), f"{row.weight:.2f}")
    console.print(votes)
    if result.fallback:
        console.print(f"[yellow]note:[/] {result.fallback}")
    tokens = result.tokens
    line = f"tokens: {tokens.total:,} (warm-up {tokens.warmup:,}, online {tokens.online:,})"
    majority = getattr(result, "tokens_majority_estimate", None)
    if majority:
        saved = 1.0 - tokens.total / majority
        line += f"; plain majority over the same budget: ~{majority:,.0f} ({saved:+.0%} saved)"
    console.print(line)
    statuses: dict[str, int] = {}
    for trace in result.traces:
        statuses[str(trace.status)] = statuses.get(str(trace.status), 0) + 1
    shown = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    threshold = "—" if result.threshold is None else f"{result.threshold:.3f}"
    console.print(
        f"traces: {shown}; threshold {threshold}; beta {result.beta:.2f}; "
        f"stopped by {result.stop_reason}; {result.wall_time:.1f}s"
    )
    console.print(f"[bold]answer:[/] [bold green]{result.answer}[/]")


async def _run_solve(
    backend: Backend, config: Any, prompt: str, save_traces: Path | None, live: bool
) -> Any:
    from deepconf.controller import DeepConf

    console = Console(stderr=True)
    started = time.monotonic()
    try:
        await backend.open()
        if not live:
            return await DeepConf(backend, config, trace_path=save_traces).solve(prompt)
        with Live(console=console, refresh_per_second=8, transient=True) as view:

            def on_progress(p: Any) -> None:
                view.update(_progress_table(p, started))

            engine = DeepConf(backend, config, trace_path=save_traces, on_progress=on_progress)
            return await engine.solve(prompt)
    finally:
        await backend.aclose()


def _bundled_prompt(backend: Backend, prompt: str) -> tuple[str, str | None]:
    """The prompt as the bundled model was trained to read it, and a note for the user when
    it is outside the model's task family (the model will still try, and say nonsense)."""
    from deepconf.eval import task_chain

    if backend_defaults(backend).get("task") != task_chain.TASK_ID:
        return prompt, None
    problem = task_chain.parse_prompt(prompt.strip())
    if problem is not None:
        return problem.expression, None
    return prompt, (
        "the bundled model is a tiny model that only knows chains of additions and "
        "subtractions of small numbers, such as 'Compute 48+75-29+63.'; for other problems "
        "point deepconf at a real model server with --base-url (e.g. vLLM serving "
        "Falcon-H1R-7B)"
    )


@app.command()
def solve(
    prompt: Annotated[
        str | None, typer.Argument(help="The problem; '-' reads stdin.", show_default=False)
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the problem from a file.")
    ] = None,
    base_url: BaseUrl = None,
    model: ModelName = None,
    api: Api = "chat",
    api_key: ApiKey = None,
    rps: RequestsPerSecond = None,
    timeout: Timeout = 600.0,
    trace_timeout: TraceTimeout = None,
    no_probe: NoProbe = False,
    max_event_mb: MaxEventMb = 16.0,
    mode: Mode = None,
    variant: Variant = None,
    budget: Budget = None,
    token_budget: TokenBudget = None,
    warmup: Warmup = None,
    window: Window = None,
    tau: Tau = None,
    top_logprobs: TopLogprobs = None,
    concurrency: Concurrency = None,
    offline_method: OfflineMethod = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    system: System = None,
    save_traces: Annotated[
        Path | None, typer.Option("--save-traces", help="Append every trace to this JSONL file.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the result record as JSON on stdout.")
    ] = False,
) -> None:
    """Solve one problem with DeepConf and print the answer with its votes."""
    console = Console()
    try:
        text = _read_prompt(prompt, file)
        backend = backend_from_flags(
            base_url,
            model,
            api,
            api_key,
            rps,
            timeout,
            top_logprobs=top_logprobs,
            trace_timeout=trace_timeout,
            probe=not no_probe,
            max_event_mb=max_event_mb,
        )
        config = config_from_flags(
            defaults=backend_defaults(backend),
            mode=mode,
            variant=variant,
            budget=budget,
            token_budget=token_budget,
            warmup=warmup,
            window=window,
            tau=tau,
            top_logprobs=top_logprobs,
            concurrency=concurrency,
            offline_method=offline_method,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            system=system,
        )
        text, hint = (text, None) if base_url else _bundled_prompt(backend, text)
        if hint and not as_json:
            note(hint)
        live = not as_json and sys.stderr.isatty()
        result = asyncio.run(_run_solve(backend, config, text, save_traces, live))
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    if as_json:
        from deepconf.result import json_default

        typer.echo(json.dumps(result.to_dict(), default=json_default))
        return
    _summary(console, result)


@app.command("serve-model")
def serve_model(
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Hugging Face-format Falcon-H1 folder (default: bundled)."),
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8001,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Sequences decoded at once.")] = 64,
) -> None:
    """Serve a Falcon-H1 checkpoint (default: the bundled model) over an OpenAI-compatible API."""
    from deepconf.backends.model_server import serve_model as run_server

    try:
        run_server(model, host=host, port=port, max_batch=max_batch)
    except DeepConfError as exc:
        raise fail(str(exc)) from None


_BENCHMARKS = {"stream": "deepconf.eval.bench_stream", "engine": "deepconf.eval.bench_engine"}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    which: Annotated[str, typer.Argument(help="stream (client hot path) or engine (bundled).")],
) -> None:
    """Run a benchmark; it prints ratios measured side by side in one run.

    Flags after WHICH go to the benchmark, e.g. `deepconf bench engine --batches 1 16 64`;
    `deepconf bench stream --help` lists them.
    """
    import importlib

    if which not in _BENCHMARKS:
        raise fail(f"unknown benchmark {which!r}: choose {' or '.join(_BENCHMARKS)}")
    importlib.import_module(_BENCHMARKS[which]).main(list(ctx.args))


# Commands that live beside what they drive; registered here, the one composition root.
app.command("serve")(serve_command)
app.command("eval")(eval_command)
app.command("replay")(replay_command)
app.command("plot")(plot_command)
app.command("doctor")(doctor_command)
