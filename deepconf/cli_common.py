"""Flags shared by the commands that run DeepConf (solve, eval, serve), the factories that
turn them into a config and a backend, and the one way a command fails or notes something.

Each flag maps 1:1 to a config field. Flags left unset (None) take the model's card: the
bundled model's deepconf.json in process, or the `deepconf` settings a server advertises in
GET /v1/models with --base-url (`model_card_of`); then the DeepConfConfig defaults (the
paper's).

    card, source = model_card_of(backend, base_url, model, api_key)
    config, from_card = config_and_card(card, window=64, budget=32)
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from deepconf.errors import ConfigError

if TYPE_CHECKING:  # annotations only: at start-up (`deepconf --help`) these would load
    # numpy and pydantic; the factories import what they build when they run.
    from deepconf.backend import Backend
    from deepconf.config import DeepConfConfig


# Piped output is read by people too (`| tee log`, CI logs): rich would fold it to 80 columns
# and cut table headers to "accu…"; a pipe has no width, so give it a readable one.
PIPE_WIDTH = 120


def console(*, stderr: bool = False) -> Console:
    """A rich console for command output: the terminal's width, or PIPE_WIDTH (or $COLUMNS)
    when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty():
        width = int(os.environ.get("COLUMNS") or 0) or PIPE_WIDTH
    return Console(stderr=stderr, width=width)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an expected error as one red line on stderr; raise the returned exit (code 1).
    The message is printed as written: brackets (pip extras, lists) are not rich markup."""
    console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code=code)


def note(message: str) -> None:
    """A yellow one-line note on stderr (stdout stays clean for --json and tables)."""
    console(stderr=True).print(
        f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True
    )


# --- backend flags -------------------------------------------------------------------------
BaseUrl = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (repeat for several; "
        "traces go to the least-loaded; URL#3 weighs one 3 to others' 1). Omit to run the "
        "bundled model in process.",
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
        metavar="",  # a flag: typer would print <bool>, as if it took a value
    ),
]
MaxEventMb = Annotated[
    float,
    typer.Option("--max-event-mb", help="Largest server-sent event accepted, in MiB."),
]

# --- DeepConf flags (None: the model card's value, else DeepConfConfig's default) ----------
# Help texts state the defaults by hand: importing DeepConfConfig here would load pydantic
# at start-up; tests/test_cli_flags.py holds them equal to the config's.
Mode = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="online (Algorithm 2: warm-up, threshold, pruning, consensus stop) or offline"
        " (N traces, then filtered votes). \\[default: online]",
    ),
]
Variant = Annotated[
    str | None,
    typer.Option(
        "--variant",
        help="low keeps the top 10% of warm-up traces (aggressive), high the top 90% (safe)."
        " \\[default: low]",
    ),
]
PolicyName = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Online policy: deepconf-low, deepconf-high, deepconf-adaptive, majority, tau,"
        " esc, beta, dirichlet, beta-z, conf-beta, cisc or self-certainty (the table:"
        " deepconf.policies)."
        " \\[default: deepconf-<variant>]",
    ),
]
KeepPercent = Annotated[
    float | None,
    typer.Option(
        "--keep-percent",
        help="eta: percent of warm-up traces the online filter keeps, above 0 and at most 100"
        " (DeepConf-low is 10, -high 90); for the policies with a warm-up filter."
        " \\[default: --variant's]",
    ),
]
Budget = Annotated[
    int | None,
    typer.Option("--budget", help="Trace budget, warm-up included. \\[default: 64]"),
]
TokenBudget = Annotated[
    int | None,
    typer.Option(
        "--token-budget",
        help="Stop once this many tokens are generated in all. \\[default: none]",
    ),
]
Warmup = Annotated[
    int | None,
    typer.Option(
        "--warmup",
        help="Warm-up traces, run to completion to set the threshold."
        " \\[default: 16, or --budget when smaller]",
    ),
]
Window = Annotated[
    int | None,
    typer.Option(
        "--window",
        help="Group window in tokens. \\[default: the model card's (bundled model: 16), else 2048]",
    ),
]
Tail = Annotated[
    int | None,
    typer.Option(
        "--tail",
        help="Tokens of the tail-confidence metric (tail, tail@10, ...)."
        " \\[default: the model card's (bundled model: 16), else 2048]",
    ),
]
BottomFraction = Annotated[
    float | None,
    typer.Option(
        "--bottom-fraction",
        help="Fraction of lowest groups the bottom metric averages. \\[default: 0.1]",
    ),
]
Tau = Annotated[
    float | None,
    typer.Option("--tau", help="Consensus beta at which generation stops. \\[default: 0.95]"),
]
TopLogprobs = Annotated[
    int | None,
    typer.Option("--top-logprobs", help="k: top logprobs per token. \\[default: 20]"),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        help="Traces in flight (1 reproduces the paper's sequential run). \\[default: 16]",
    ),
]
OfflineMethod = Annotated[
    str | None,
    typer.Option(
        "--offline-method",
        help="Offline answer: majority, mean, tail, bottom, lowest, or one with @10 / @90."
        " \\[default: tail@10]",
    ),
]
Temperature = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        help="Sampling temperature. \\[default: the model card's (bundled model: 1.0), else 0.6]",
    ),
]
TopP = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        help="Nucleus sampling mass. \\[default: the model card's (bundled model: 1.0), else 0.95]",
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        help="Max tokens per trace. \\[default: the model card's (bundled model: 160), else 8192]",
    ),
]
Seed = Annotated[
    int | None,
    typer.Option("--seed", help="Base seed; trace i uses seed + i. \\[default: unseeded]"),
]
System = Annotated[
    str | None,
    typer.Option("--system", help="System prompt (chat API). \\[default: none]"),
]

# Flags that live in a sub-model of DeepConfConfig.
_CONFIDENCE = {"window", "top_logprobs", "tail", "bottom_fraction"}
_SAMPLING = {"temperature", "top_p", "max_tokens", "seed", "system"}


def config_from_flags(defaults: dict[str, Any] | None = None, **flags: Any) -> DeepConfConfig:
    """Build the config from CLI flags; unset flags (None) take the model card's settings in
    `defaults` (window, tail, temperature, top_p, max_tokens, ...), then the config's own.

    Raises ConfigError with pydantic's message when a value is out of range."""
    return config_and_card(defaults, **flags)[0]


def config_and_card(
    card: dict[str, Any] | None = None, **flags: Any
) -> tuple[DeepConfConfig, dict[str, Any]]:
    """`config_from_flags`, and the settings the model card supplied (for a note)."""
    from deepconf.config import DeepConfConfig, settings_message
    from deepconf.model_settings import with_model_defaults

    given = {k: v for k, v in flags.items() if v is not None}
    top: dict[str, Any] = {}
    confidence: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for key, value in given.items():
        if key in _CONFIDENCE:
            confidence[key] = value
        elif key in _SAMPLING:
            sampling[key] = value
        else:
            top[key] = value
    # An online run's warm-up cannot exceed its budget; shrink the default warm-up to fit a
    # small --budget rather than refuse (an explicit --warmup is still checked). A budget
    # below 1 is left for the budget's own message, not blamed on a warm-up nobody set.
    default_warmup = DeepConfConfig.model_fields["warmup"].default
    if "warmup" not in top and 1 <= top.get("budget", default_warmup) < default_warmup:
        top["warmup"] = top["budget"]
    try:
        config = DeepConfConfig(**top, confidence=confidence, sampling=sampling)
    except ValueError as exc:
        raise ConfigError(settings_message(exc)) from exc
    # Only the flags given are set (pydantic's fields_set): the card fills every other
    # setting it names, exactly as for the Python API.
    return with_model_defaults(config, card)


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
    if api not in ("chat", "completions"):
        raise ConfigError(f"--api must be chat or completions, got {api!r}")
    if not base_url:
        if api != "chat":
            # In process there is no wire API: the prompt always goes through the model's
            # chat template. Accepting the flag silently would suggest otherwise.
            raise ConfigError(
                "--api applies to servers (--base-url); the bundled model in process always"
                " renders the prompt with its chat template"
            )
        from deepconf.backends.bundled import BundledBackend

        return BundledBackend(model)
    from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
    from deepconf.config import DeepConfConfig, settings_message

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
    from deepconf.model_settings import model_card

    return model_card(backend)


def model_card_of(
    backend: Backend,
    base_url: list[str] | None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> tuple[dict[str, Any], str]:
    """The model's card for the flags' defaults, and where it came from (for the note):
    the in-process model's deepconf.json, or what the server advertises in /v1/models for
    the model (none when it advertises nothing: vLLM, llama.cpp, hosted APIs).

    Raises ConnectError when no --base-url answers: the solve could not run anyway, and
    this says so before anything else is tried."""
    if not base_url:
        return backend_defaults(backend), f"the model card of {backend.model}"
    from deepconf.backends.routing import split_weight
    from deepconf.model_settings import advertised_settings

    key = api_key or os.environ.get("OPENAI_API_KEY")
    urls = [split_weight(u)[0] for u in base_url]  # URL#3: the weight is no part of the URL
    name, card = advertised_settings(urls, model, api_key=key, timeout=min(timeout, 10.0))
    return card, f"the settings {urls[0]} advertises for {name}"


def card_note(applied: dict[str, Any], source: str) -> str | None:
    """'using window 16, tail 16, ... from <source> (a flag overrides each)', or None."""
    if not applied:
        return None
    from deepconf.model_settings import describe

    return f"using {describe(applied)} from {source} (a flag overrides each)"
