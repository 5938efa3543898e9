"""The `deepconf serve` command: DeepConf as an OpenAI-compatible server in front of one or
more upstream OpenAI-compatible servers (see deepconf/serve/app.py for the protocol).

    deepconf serve --upstream http://localhost:8000/v1 --port 8080 --api-key sk-local \\
        --budget 64 --window 2048

Registered by deepconf/cli.py as ``app.command("serve")(serve_command)``. The DeepConf flags
set server-side defaults; each request may override them in its `deepconf` object.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer

from deepconf.cli_common import (
    Budget,
    Concurrency,
    KeepPercent,
    MaxEventMb,
    MaxTokens,
    Mode,
    NoProbe,
    OfflineMethod,
    RequestsPerSecond,
    Seed,
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
    config_from_flags,
    fail,
)
from deepconf.errors import ConfigError, DeepConfError

if TYPE_CHECKING:  # annotations only: importing it at start-up would load numpy
    from deepconf.backend import Backend

Upstream = Annotated[
    list[str],
    typer.Option(
        "--upstream",
        help="Upstream OpenAI-compatible server, e.g. http://localhost:8000/v1 (repeat for"
        " several; traces go to the least-loaded; URL#3 weighs one 3 to others' 1).",
        envvar="DEEPCONF_UPSTREAM",
        show_default=False,
    ),
]
ServerKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="Require 'Authorization: Bearer KEY' from clients (default: $DEEPCONF_API_KEY;"
        " none: open).",
        envvar="DEEPCONF_API_KEY",
        show_default=False,
    ),
]
UpstreamKey = Annotated[
    str | None,
    typer.Option(
        "--upstream-api-key",
        help="Key sent to the upstreams (default: $OPENAI_API_KEY).",
        show_default=False,
    ),
]


def serve_command(
    ctx: typer.Context,
    upstream: Upstream,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    api_key: ServerKey = None,
    upstream_api_key: UpstreamKey = None,
    max_concurrent_solves: Annotated[
        int,
        typer.Option(
            "--max-concurrent-solves", help="Solves run at once; more get 429 + Retry-After."
        ),
    ] = 8,
    max_budget: Annotated[
        int,
        typer.Option("--max-budget", help="Most traces one request may ask for (deepconf.budget)."),
    ] = 512,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="Largest request body accepted.")
    ] = 8 * 1024 * 1024,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            help="Client connections open at once; past it the one waiting longest for its"
            " request head is closed (default: half of `ulimit -n`).",
            show_default=False,
        ),
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option("--header-timeout", help="Seconds a connection has to send its request head."),
    ] = 5.0,
    rps: RequestsPerSecond = None,
    timeout: Timeout = 600.0,
    trace_timeout: TraceTimeout = None,
    no_probe: NoProbe = False,
    max_event_mb: MaxEventMb = 16.0,
    mode: Mode = None,
    variant: Variant = None,
    keep_percent: KeepPercent = None,
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
    log_level: Annotated[str, typer.Option("--log-level", help="info, warning, ...")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Server processes sharing the port, one core each; --max-concurrent-solves"
            " is split among them.",
        ),
    ] = 1,
    listen_fd: Annotated[
        int | None, typer.Option("--listen-fd", hidden=True, help="(a worker's socket)")
    ] = None,
    reuse_port: Annotated[
        bool, typer.Option("--reuse-port", hidden=True, help="(a worker's own socket)")
    ] = False,
) -> None:
    """Serve DeepConf over an OpenAI-compatible API in front of UPSTREAM servers."""
    import httpx

    from deepconf.backends.openai_http import OpenAIHttpBackend
    from deepconf.serve.app import create_app
    from deepconf.serve.connections import ConnectionGuard, run_server, upstream_connections

    try:
        defaults = config_from_flags(
            mode=mode,
            variant=variant,
            keep_percent=keep_percent,
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
        )
        upstream_key = upstream_api_key or os.environ.get("OPENAI_API_KEY")
        urls = _normalised(upstream)

        def factory(model: str, endpoint: str, transport: httpx.AsyncBaseTransport) -> Backend:
            # The endpoint a request arrives on picks the upstream's chat or completions API;
            # every backend sends through the server's one connection pool (`transport`).
            flags = backend_from_flags(
                upstream,  # as given: URL#weight keeps its weight (urls are plain)
                model,
                endpoint,
                upstream_key,
                rps,
                timeout,
                trace_timeout=trace_timeout,
                probe=not no_probe,
                max_event_mb=max_event_mb,
            )
            assert isinstance(flags, OpenAIHttpBackend), "--upstream always gives HTTP backends"
            return OpenAIHttpBackend(flags.config, transport=transport)

        try:
            guard = ConnectionGuard(max_connections, header_timeout)
        except ValueError as exc:
            raise ConfigError(f"--max-connections / --header-timeout: {exc}") from exc
        app = create_app(
            factory,
            defaults=defaults,
            upstreams=urls,
            upstream_api_key=upstream_key,
            api_key=api_key,
            max_concurrent_solves=max_concurrent_solves,
            max_budget=max_budget,
            max_body_bytes=max_body_bytes,
            max_upstream_connections=upstream_connections(),
            connections=guard,
        )
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    _setup_logging(log_level)
    if workers > 1 and listen_fd is None and not reuse_port:
        from deepconf.serve.workers import serve_with_workers

        try:
            serve_with_workers(ctx, guard, host, port, workers, max_concurrent_solves)
        except DeepConfError as exc:
            raise fail(str(exc)) from None
        return
    own = {"listen_fd": listen_fd, "reuse_port": reuse_port}  # a worker's socket, if one
    run_server(app, guard, host=host, port=port, log_level=log_level.lower(), **own)


def _normalised(urls: list[str]) -> list[str]:
    """The upstream URLs as the HTTP backend reads them (a bare host gets /v1, a #weight
    suffix is checked and dropped): the ones whose /models the server lists."""
    from pydantic import ValidationError

    from deepconf.backends.openai_http import HttpBackendConfig

    if not urls:
        raise ConfigError("give at least one --upstream URL, e.g. http://localhost:8000/v1")
    try:
        return HttpBackendConfig(base_urls=urls).base_urls
    except ValidationError as exc:
        reason = str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")
        raise ConfigError(f"bad --upstream: {reason}") from exc


def _setup_logging(level: str) -> None:
    """The per-request JSON lines go to stderr, one per line, nothing around them."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("deepconf.serve")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
