"""The `deepconf doctor` command: check a server the way DeepConf needs it, print findings.

    deepconf doctor --base-url http://localhost:8000/v1
    deepconf doctor --base-url http://localhost:8000/v1 --api completions --json | jq .wrong

Prints a table (check, result, verdict, fix) or, with --json, the findings as JSON and
nothing else on stdout. Exit 1 when a finding would make DeepConf wrong (no streaming, no or
too few logprobs, placeholder values, streams cut short when run together, ...) or when the
server cannot be reached; 0 otherwise, warnings and unknowns included.

Registered by deepconf/cli.py as ``app.command("doctor")(doctor_command)``; the checks live
in deepconf/doctor.py and deepconf/doctor_run.py, imported when the command runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deepconf.cli_common import Api, ApiKey, fail
from deepconf.errors import DeepConfError

if TYPE_CHECKING:  # annotations only: loaded when the command runs, not at start-up
    from deepconf.doctor import Report

VERDICT_STYLE = {"ok": "green", "warn": "yellow", "FAIL": "bold red", "unknown": "dim"}


def doctor_command(
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url",
            help="The OpenAI-compatible server to check, e.g. http://localhost:8000/v1.",
            envvar="DEEPCONF_BASE_URL",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model name (default: the first of GET /v1/models)."),
    ] = None,
    api: Api = "chat",
    api_key: ApiKey = None,
    top_logprobs: Annotated[
        int, typer.Option("--top-logprobs", help="k logprobs per token DeepConf will ask for.")
    ] = 20,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds per request, from send to last byte.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a server for DeepConf: streaming, top-k logprobs, their mode, usage, streams
    cut short when run together, abort on close, tokens/s. Exit 1 if DeepConf would be wrong."""
    import os

    from deepconf.config import settings_message
    from deepconf.doctor import DoctorSettings
    from deepconf.doctor_run import diagnose

    try:
        settings = DoctorSettings(
            base_url=base_url,
            model=model,
            api=api,  # type: ignore[arg-type]  # pydantic checks chat/completions
            api_key=api_key or os.environ.get("OPENAI_API_KEY"),
            top_logprobs=top_logprobs,
            timeout=timeout,
        )
    except ValueError as exc:
        raise fail(settings_message(exc)) from None
    try:
        with Console(stderr=True).status(f"checking {base_url} ..."):
            report = asyncio.run(diagnose(settings))
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        Console().print(findings_table(report))
    if report.wrong:
        raise typer.Exit(code=1)


def findings_table(report: Report) -> Table:
    """The findings as a rich table: check, result, verdict, fix."""
    table = Table(
        title=f"deepconf doctor: {report.base_url} ({report.model}, {report.api},"
        f" k={report.top_logprobs})",
        show_lines=True,
    )
    table.add_column("check", style="bold cyan", no_wrap=True)
    table.add_column("result")
    table.add_column("verdict", no_wrap=True)
    table.add_column("fix")
    for f in report.findings:
        # Text, not markup: results quote the wire ("[DONE]") and must print as they are
        verdict = Text(f.verdict, style=VERDICT_STYLE[f.verdict])
        table.add_row(Text(f.check), Text(f.result), verdict, Text(f.fix or "-"))
    return table
