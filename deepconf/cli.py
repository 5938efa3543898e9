"""The `deepconf` command line: the composition root that picks a backend and a config.

    deepconf solve "Compute 958+672-205-968-157."                  # bundled model, in process
    deepconf solve --base-url http://localhost:8000/v1 --window 2048 --file problem.txt
    deepconf serve-model --port 8001                             # the bundled model over HTTP

Only parsing and printing live here (the solve's views: deepconf/solve_view.py); nothing
imports from this module. Expected errors (`DeepConfError`) become a one-line message and
exit code 1; Ctrl-C says what was interrupted and exits 130; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live

from deepconf import __version__
from deepconf.cli_common import (
    Api,
    ApiKey,
    BaseUrl,
    BottomFraction,
    Budget,
    Concurrency,
    KeepPercent,
    MaxEventMb,
    MaxTokens,
    Mode,
    ModelName,
    NoProbe,
    OfflineMethod,
    PolicyName,
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
    Variant,
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
from deepconf.doctor_command import doctor_command
from deepconf.errors import ConfigError, DeepConfError
from deepconf.eval.commands import eval_command, plot_command
from deepconf.eval.merge_command import eval_merge_command
from deepconf.eval.replay_command import replay_command
from deepconf.serve.command import serve_command

if TYPE_CHECKING:  # annotations only: importing it at start-up would load numpy
    from deepconf.backend import Backend

# The distribution on the package index (`pip install deepconf-orchestrator`); the command
# and the import package are `deepconf`. The index's "deepconf" is another project (the
# paper authors' vLLM wrapper, import name deepconf too): `deepconf --version` tells them apart.
DISTRIBUTION = "deepconf-orchestrator"

app = typer.Typer(
    name="deepconf",
    help="DeepConf: many reasoning traces, low-confidence ones pruned early, a confident vote.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"deepconf {__version__} (distribution {DISTRIBUTION}; {Path(__file__).parent})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version, the distribution and where it is installed, then exit.",
            callback=_print_version,
            is_eager=True,
            metavar="",
        ),
    ] = False,
) -> None:
    """DeepConf: many reasoning traces, low-confidence ones pruned early, a confident vote."""


def _refuse_online_flags(mode: str, **given: object) -> None:
    """Offline, --variant, --tau and --warmup mean nothing (every trace runs; the vote is
    --offline-method's): refuse them when given rather than ignore them."""
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if mode == "offline" and named:
        raise ConfigError(
            f"{', '.join(named)} {'applies' if len(named) == 1 else 'apply'} to online runs only;"
            " offline runs every trace of --budget and answers with --offline-method"
            " (majority, tail@10, tail@90, ...): drop it, or use --mode online"
        )


def _read_prompt(prompt: str | None, file: Path | None) -> str:
    if file is not None:
        if prompt is not None:
            raise ConfigError("give the problem either as PROMPT or with --file, not both")
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --file {file}: {exc.strerror}") from exc
        where = f"--file {file}"
    elif prompt is None:
        raise ConfigError("no problem given: pass PROMPT, '-' to read stdin, or --file PATH")
    elif prompt == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        text, where = prompt, "PROMPT"
    if not text.strip():
        # A model given nothing still writes something (the bundled one: an answer of 3),
        # and an exit 0 would vouch for it.
        raise ConfigError(f"the problem is empty ({where} holds no text): give the problem")
    return text


def _family_note(backend: Backend, prompt: str) -> str | None:
    """A note when the bundled model is asked something outside its task family (it will
    still answer, with a chain of arithmetic that means nothing)."""
    from deepconf.eval import task_chain
    from deepconf.model_settings import model_card

    if model_card(backend).get("task") != task_chain.TASK_ID or task_chain.in_family(prompt):
        return None
    return (
        "the bundled model is a tiny model that only knows chains of additions and"
        " subtractions whose numbers all have the same number of digits (1-3), such as"
        " 'Compute 48+75-29+63.'; its answer to anything else means nothing. For other"
        " problems point deepconf at a real model server with --base-url (e.g. vLLM serving"
        " Falcon-H1R-7B)"
    )


def _problem_id(given: str | None, text: str, save_traces: Path | None) -> str | None:
    """The problem id traces are saved under: the one given, or one derived from the text
    (a replay keys pools and gold answers by it)."""
    if given is not None or save_traces is None:
        return given
    return "prompt-" + hashlib.blake2b(text.strip().encode(), digest_size=4).hexdigest()


async def _run_solve(
    backend: Backend,
    config: Any,
    prompt: str,
    save_traces: Path | None,
    live: bool,
    problem_id: str | None,
) -> Any:
    from deepconf.controller import DeepConf
    from deepconf.solve_view import progress_table

    started = time.monotonic()
    try:
        await backend.open()
        if not live:
            engine = DeepConf(backend, config, trace_path=save_traces)
            return await engine.solve(prompt, problem_id=problem_id)
        with Live(console=console(stderr=True), refresh_per_second=8, transient=True) as view:

            def on_progress(p: Any) -> None:
                view.update(progress_table(p, started))

            engine = DeepConf(backend, config, trace_path=save_traces, on_progress=on_progress)
            return await engine.solve(prompt, problem_id=problem_id)
    finally:
        await backend.aclose()


def _saved_note(path: Path, problem_id: str | None, mode: str) -> str:
    if mode != "offline":
        return (
            f"traces saved to {path} (problem id {problem_id}); online traces are pruned, so"
            " replay needs traces recorded with --mode offline"
        )
    return (
        f"traces saved to {path} (problem id {problem_id}); replay them with:"
        f" deepconf replay {path} --gold ANSWER"
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
    policy: PolicyName = None,
    keep_percent: KeepPercent = None,
    budget: Budget = None,
    token_budget: TokenBudget = None,
    warmup: Warmup = None,
    window: Window = None,
    tail: Tail = None,
    bottom_fraction: BottomFraction = None,
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
    problem_id: Annotated[
        str | None,
        typer.Option(
            "--problem-id",
            help="The id saved traces carry (replay keys gold answers by it)."
            " \\[default: prompt-<hash of the problem>]",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print only the result record as JSON on stdout.", metavar=""),
    ] = False,
) -> None:
    """Solve one problem with DeepConf and print the answer, with plain majority beside it.

    Exit 0: an answer. Exit 1: an error, or no answer (the message says why and what to
    change). Exit 130: interrupted.
    """
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
        card, source = model_card_of(backend, base_url, model, api_key, timeout)
        config, from_card = config_and_card(
            card,
            mode=mode,
            variant=variant,
            policy=policy,
            keep_percent=keep_percent,
            budget=budget,
            token_budget=token_budget,
            warmup=warmup,
            window=window,
            tail=tail,
            bottom_fraction=bottom_fraction,
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
        _refuse_online_flags(config.mode, variant=variant, tau=tau, warmup=warmup)
        if (said := card_note(from_card, source)) and not as_json:
            note(said)
        if family := _family_note(backend, text):
            note(family)  # on stderr even with --json: the answer means nothing
        pid = _problem_id(problem_id, text, save_traces)
        live = not as_json and sys.stderr.isatty()
        result = asyncio.run(_run_solve(backend, config, text, save_traces, live, pid))
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        saved = f"; the traces that ended are in {save_traces}" if save_traces else ""
        raise fail(f"interrupted: no answer{saved}", code=130) from None
    if as_json:
        from deepconf.result import json_default

        typer.echo(json.dumps(result.to_dict(), default=json_default))
    else:
        from deepconf.solve_view import print_summary

        print_summary(console(), result)
    if save_traces is not None and not as_json:
        note(_saved_note(save_traces, pid, config.mode))
    if result.answer is None:
        from deepconf.solve_view import no_answer_hint

        raise fail(no_answer_hint(result, config))
    if family and not as_json:
        note("the problem is outside the bundled model's task family (see above)")


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
    """Serve a Falcon-H1 checkpoint (default: the bundled model) over an OpenAI-compatible API.

    GET /v1/models advertises the model card's DeepConf settings (a `deepconf` object), and
    requests that leave sampling unset get the card's: `deepconf solve --base-url` then
    behaves as in process.
    """
    from deepconf.backends.model_server import serve_model as run_server

    try:
        run_server(model, host=host, port=port, max_batch=max_batch)
    except DeepConfError as exc:
        raise fail(str(exc)) from None


_BENCHMARKS = {
    "stream": "deepconf.eval.bench_stream",
    "engine": "deepconf.eval.bench_engine",
    "serve": "deepconf.eval.bench_serve",
    "hostile": "deepconf.eval.bench_hostile",
    "workers": "deepconf.eval.bench_workers",
    "serve-workers": "deepconf.eval.bench_serve_workers",
    "memory": "deepconf.eval.bench_memory",
}


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # `bench stream --help` is the benchmark's help, not this one
)
def bench(
    ctx: typer.Context,
    which: Annotated[
        str | None,
        typer.Argument(
            help="stream (client hot path), engine (bundled), serve (load test of `deepconf"
            " serve`), hostile (slowloris, model names, huge bodies), workers (eval"
            " --workers N against one worker), serve-workers (serve --workers N against one"
            " worker) or memory (peak RSS of one big solve and of 10,000 traces in flight).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a benchmark; it prints ratios measured side by side in one run.

    Flags after WHICH go to the benchmark, e.g. `deepconf bench engine --batches 1 16 64`;
    `deepconf bench stream --help` lists them.
    """
    import importlib

    if which is None or which in ("--help", "-h"):
        typer.echo(ctx.get_help())
        raise typer.Exit(0 if which else 2)
    if which not in _BENCHMARKS:
        raise fail(f"unknown benchmark {which!r}: choose {' or '.join(_BENCHMARKS)}")
    # argparse names itself after argv[0]: "usage: deepconf bench stream ...", not "deepconf".
    argv0, sys.argv[0] = sys.argv[0], f"deepconf bench {which}"
    try:
        importlib.import_module(_BENCHMARKS[which]).main(list(ctx.args))
    finally:
        sys.argv[0] = argv0


# Commands that live beside what they drive; registered here, the one composition root.
app.command("serve")(serve_command)
app.command("eval")(eval_command)
app.command("eval-merge")(eval_merge_command)
app.command("replay")(replay_command)
app.command("plot")(plot_command)
app.command("doctor")(doctor_command)
