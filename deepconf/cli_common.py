"""Flags shared by the commands that run DeepConf (solve, eval, serve), the two
factories that turn them into a config and a backend, and the one way a command fails.

Each flag maps 1:1 to a config field. Flags left unset (None) take the backend's defaults:
the bundled model's card (its window and sampling) when no --base-url is given, the
DeepConfConfig defaults (the paper's) otherwise.

    config = config_from_flags(defaults=backend_defaults(backend), window=64, budget=32)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from deepconf.errors import ConfigError

if TYPE_CHECKING:  # annotations only: at start-up (`deepconf --help`) these would load
    # numpy and pydantic; the factories import what they build when they run.
    from deepconf.backend import Backend
    from deepconf.config import DeepConfConfig


def fail(message: str) -> typer.Exit:
    """Print an expected error as one red line on stderr; raise the returned exit (code 1)."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def note(message: str) -> None:
    """A yellow one-line note on stderr (stdout stays clean for --json and tables)."""
    Console(stderr=True).print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


# --- backend flags -------------------------------------------------------------------------
BaseUrl = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (repeat for several; "
        "traces go to the least-loaded). Omit to run the bundled model in process.",
        envvar="DEEPCONF_BASE_URL",
    ),
]
ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="With --base-url: the model name (discovered from /v1/models when omitted). "
        "Without: a local Falcon-H1 checkpoint folder to run in process (default: bundled).",
    ),
]
Api = Annotated[str, typer.Option("--api", help="chat or completions.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="API key (default: $OPENAI_API_KEY).", show_default=False),
]
RequestsPerSecond = Annotated[
    float | None, typer.Option("--rps", help="Limit requests per second to the server.")
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds a stream may go without a new token before its trace fails and is"
        " replaced (keep-alive comments do not count).",
    ),
]
TraceTimeout = Annotated[
    float | None,
    typer.Option("--trace-timeout", help="Wall-clock seconds one trace may take (default: none)."),
]
NoProbe = Annotated[
    bool,
    typer.Option(
        "--no-probe",
        help="Skip the capability probe; the first traces check the server's logprobs instead.",
    ),
]
MaxEventMb = Annotated[
    float,
    typer.Option("--max-event-mb", help="Largest server-sent event accepted, in MiB."),
]

# --- DeepConf flags (None: the backend's default) -------------------------------------------
Mode = Annotated[str | None, typer.Option("--mode", help="online (Algorithm 2) or offline.")]
Variant = Annotated[
    str | None, typer.Option("--variant", help="low keeps the top 10%, high the top 90%.")
]
Budget = Annotated[int | None, typer.Option("--budget", help="Trace budget, warm-up included.")]
TokenBudget = Annotated[
    int | None, typer.Option("--token-budget", help="Stop after this many tokens in all.")
]
Warmup = Annotated[int | None, typer.Option("--warmup", help="Warm-up traces (default 16).")]
Window = Annotated[int | None, typer.Option("--window", help="Group window in tokens.")]
Tau = Annotated[float | None, typer.Option("--tau", help="Consensus to stop at (default 0.95).")]
TopLogprobs = Annotated[
    int | None, typer.Option("--top-logprobs", help="k logprobs per token (default 20).")
]
Concurrency = Annotated[int | None, typer.Option("--concurrency", help="Traces in flight.")]
OfflineMethod = Annotated[
    str | None, typer.Option("--offline-method", help="Offline answer method, e.g. tail@10.")
]
Temperature = Annotated[float | None, typer.Option("--temperature", help="Sampling temperature.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help="Max tokens per trace.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Base seed; trace i uses seed + i.")]
System = Annotated[str | None, typer.Option("--system", help="System prompt (chat API).")]

# Flags that live in a sub-model of DeepConfConfig.
_CONFIDENCE = {"window", "top_logprobs", "tail", "bottom_fraction"}
_SAMPLING = {"temperature", "top_p", "max_tokens", "seed", "system"}


def config_from_flags(defaults: dict[str, Any] | None = None, **flags: Any) -> DeepConfConfig:
    """Build the config from CLI flags; unset flags fall back to `defaults` (a backend's
    model card: window, temperature, top_p, max_tokens, ...) and then to the config's own.

    Raises ConfigError with pydantic's message when a value is out of range."""
    from deepconf.config import DeepConfConfig, settings_message

    merged: dict[str, Any] = {}
    for source in (defaults or {}, flags):
        merged.update({k: v for k, v in source.items() if v is not None})
    top: dict[str, Any] = {}
    confidence: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _CONFIDENCE:
            confidence[key] = value
        elif key in _SAMPLING:
            sampling[key] = value
        elif key in DeepConfConfig.model_fields:
            top[key] = value
        # other model-card keys (task, notes, ...) are not config
    # An online run's warm-up cannot exceed its budget; shrink the default warm-up to fit a
    # small --budget rather than refuse (an explicit --warmup is still checked).
    if flags.get("warmup") is None and "budget" in top:
        default = DeepConfConfig.model_fields["warmup"].default
        top["warmup"] = min(top.get("warmup", default), top["budget"])
    try:
        return DeepConfConfig(**top, confidence=confidence, sampling=sampling)
    except ValueError as exc:
        raise ConfigError(settings_message(exc)) from exc


def backend_from_flags(
    base_url: list[str] | None,
    model: str | None = None,
    api: str = "chat",
    api_key: str | None = None,
    rps: float | None = None,
    timeout: float = 600.0,
    top_logprobs: int | None = None,
    *,
    trace_timeout: float | None = None,
    probe: bool = True,
    max_event_mb: float = 16.0,
) -> Backend:
    """The HTTP backend when base URLs are given, else the bundled in-process model.

    `top_logprobs` is k: the HTTP backend's probe then fails at open() when the server
    returns fewer, instead of every trace failing one by one."""
    if not base_url:
        from deepconf.backends.bundled import BundledBackend

        return BundledBackend(model)
    from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
    from deepconf.config import DeepConfConfig, settings_message

    if api not in ("chat", "completions"):
        raise ConfigError(f"--api must be chat or completions, got {api!r}")
    try:
        config = HttpBackendConfig(
            base_urls=list(base_url),
            model=model,
            api=api,
            api_key=api_key or os.environ.get("OPENAI_API_KEY"),
            requests_per_second=rps,
            token_timeout=timeout,
            trace_timeout=trace_timeout,
            probe=probe,
            max_event_bytes=int(max_event_mb * 2**20),
            top_logprobs=top_logprobs or DeepConfConfig().confidence.top_logprobs,
        )
    except ValueError as exc:
        raise ConfigError(settings_message(exc)) from exc
    return OpenAIHttpBackend(config)


def backend_defaults(backend: Backend) -> dict[str, Any]:
    """A backend's recommended settings (the bundled model card's), or none."""
    defaults = getattr(backend, "defaults", None)
    return dict(defaults) if isinstance(defaults, dict) else {}
