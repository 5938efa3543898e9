"""The fault matrix: online DeepConf against a server that misbehaves in each way real servers
have, and what deepconf did about it. Answers one question per fault: can it make deepconf
return a wrong answer, a NaN, a trace "completed" without a finish reason, or hang?

Each fault runs twice against the scripted loopback server (deepconf.eval.scripted_server):
on every trace, and on two traces in three. Healthy traces answer 7 with middling confidence;
faulty traces carry the fault and, where the fault lets them finish at all, a confident 13. So
a fault counted as a good trace shows up as a wrong answer, not as a quiet statistic. The
capability probe (no seed) always gets the healthy script, as a probe of a real server would.

Verdicts:
    answered       the right answer (7); every counted trace has a finish reason and tokens;
                   the threshold and every confidence are finite
    failed loudly  the solve raised a DeepConfError that names the cause
    WRONG          anything else: a wrong answer, a NaN, a counted trace without a finish
                   reason or without tokens, or a trace missing from the trace file
    HUNG           no end within the row's deadline

    python -m deepconf.eval.fault_matrix              # prints the table; exit 1 on WRONG/HUNG
    python -m deepconf.eval.fault_matrix --only stall
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.config import ConfidenceConfig, DeepConfConfig, SamplingConfig
from deepconf.controller import DeepConf
from deepconf.errors import DeepConfError
from deepconf.eval.scripted_server import Script, ScriptedServer
from deepconf.trace import TraceStatus, read_traces

REASONING = "Let me add the numbers one by one and check the sum twice before answering."
RIGHT, WRONG = "7", "13"
# Middling confidence for healthy traces, high for faulty ones: a faulty trace that slips
# through wins the weighted vote.
HEALTHY_TOP = [-0.4, *(-3.0 - 0.1 * j for j in range(30))]
FAULTY_TOP = [-0.01, *(-12.0 - 0.1 * j for j in range(30))]
DEADLINE_S = 60.0  # a row that takes longer has hung


def healthy_script(top: list[float] | None = None, **kw: Any) -> Script:
    return Script.from_text(
        f"The answer is \\boxed{{{RIGHT}}}.", reasoning=REASONING, top=top or HEALTHY_TOP, **kw
    )


def faulty_script(top: list[float] | None = None, **kw: Any) -> Script:
    return Script.from_text(
        f"The answer is \\boxed{{{WRONG}}}.", reasoning=REASONING, top=top or FAULTY_TOP, **kw
    )


@dataclass
class Fault:
    """One way a server misbehaves: the faulty traces' script, and what it takes to see it."""

    name: str
    what: str
    script: Callable[[], Script]
    backend: dict[str, Any] = field(default_factory=dict)  # HttpBackendConfig overrides
    server: dict[str, Any] = field(default_factory=dict)  # ScriptedServer arguments
    dead_peer: bool = False  # a second --base-url where nothing listens
    every_trace_only: bool = False  # the fault is server-wide: no "2 of 3" row


def _out_of_range(values: list[float]) -> list[float]:
    top = list(HEALTHY_TOP)
    top[5 : 5 + len(values)] = values
    return top


FAULTS: list[Fault] = [
    Fault("healthy", "no fault (control)", healthy_script),
    Fault(
        "interrupt",
        "llama-cpp-python's interrupt: [DONE] without a finish reason when a newer request arrives",
        lambda: healthy_script(delay=0.01),
        server={"interrupt_when_busy": True},
        every_trace_only=True,
    ),
    Fault(
        "done-no-finish", "[DONE] with no finish reason", lambda: faulty_script(finish_reason=None)
    ),
    Fault(
        "clean-close",
        "the body ends: no finish reason, no [DONE]",
        lambda: faulty_script(finish_reason=None, end="close"),
    ),
    Fault("reset", "the connection is reset mid-stream", lambda: faulty_script(drop_after=6)),
    Fault("in-stream-error", "an error object mid-stream", lambda: faulty_script(error_after=6)),
    Fault(
        "null-logprobs",
        '"logprobs": null after 4 tokens, text goes on',
        lambda: faulty_script(null_logprobs_after=4),
    ),
    Fault(
        "usage-mismatch",
        "usage claims 5 more tokens than were sent with logprobs",
        lambda: faulty_script(usage_tokens=40),
    ),
    Fault(
        "huge-logprobs",
        "-1e308 and -inf in some top-logprob entries (sums overflow)",
        lambda: healthy_script(top=_out_of_range([-1e308, -1e308, -math.inf, -1e308])),
    ),
    Fault(
        "positive-logprobs",
        "logprobs above 0 (+1e-6 rounding, +5)",
        lambda: healthy_script(top=[1e-6, 5.0, *HEALTHY_TOP[2:]]),
    ),
    Fault(
        "nan-logprob",
        "NaN in a top-logprob entry",
        lambda: faulty_script(top=_out_of_range([math.nan])),
    ),
    Fault(
        "keepalive-stall",
        "no token after 5, SSE comments every 0.2 s (--timeout 1.5)",
        lambda: faulty_script(stall_after=5, keepalive=0.2),
        backend={"token_timeout": 1.5},
    ),
    Fault(
        "silent-stall",
        "no byte after 5 tokens (--timeout 1.5)",
        lambda: faulty_script(stall_after=5),
        backend={"token_timeout": 1.5},
    ),
    Fault(
        "slow-trace",
        "a token every 0.3 s, beyond --trace-timeout 1.5",
        lambda: faulty_script(delay=0.3),
        backend={"trace_timeout": 1.5},
    ),
    Fault("html-200", "HTTP 200 with an HTML error page", lambda: faulty_script(html=True)),
    Fault(
        "endless-line",
        "a 20 MiB line with no newline (limit 16 MiB)",
        lambda: faulty_script(no_newline_bytes=20 * 2**20),
    ),
    Fault(
        "rate-limited",
        "HTTP 429 with Retry-After: 0 on every faulty request",
        lambda: faulty_script(status=429),
    ),
    Fault(
        "dead-peer",
        "a second --base-url where nothing listens",
        healthy_script,
        dead_peer=True,
        every_trace_only=True,
    ),
]


@dataclass
class Row:
    fault: str
    share: str  # "every trace" | "2 of 3"
    verdict: str
    detail: str
    accounted: str  # "records/launched"
    seconds: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config() -> DeepConfConfig:
    return DeepConfConfig(
        budget=9,
        warmup=3,
        concurrency=4,
        confidence=ConfidenceConfig(window=4),
        sampling=SamplingConfig(seed=0, max_tokens=64),
    )


async def run_fault(fault: Fault, every: bool, workdir: Path) -> Row:
    """One row: a solve against the fault on every trace (`every`) or two traces in three."""
    faulty = fault.script()
    healthy = healthy_script()

    def faulty_seed(body: dict[str, Any]) -> bool:
        seed = body.get("seed")
        return seed is not None and (every or seed % 3 != 0)

    def choose(_n: int, body: dict[str, Any]) -> Script:
        return faulty if faulty_seed(body) else healthy

    share = "every trace" if every else "2 of 3"
    path = workdir / f"{fault.name}-{'all' if every else 'some'}.jsonl"
    started = time.monotonic()
    with ScriptedServer(choose=choose, **fault.server) as server:
        urls = [server.base_url]
        if fault.dead_peer:
            urls.insert(0, f"http://127.0.0.1:{_free_port()}/v1")
        cfg = {"base_urls": urls, "backoff_base": 0.01, "backoff_cap": 0.05} | fault.backend
        backend = OpenAIHttpBackend(HttpBackendConfig(**cfg))
        engine = DeepConf(backend, _config(), trace_path=path)
        try:
            result = await asyncio.wait_for(engine.solve("What is 3+4?"), DEADLINE_S)
        except TimeoutError:
            verdict, detail = "HUNG", f"no end in {DEADLINE_S:g} s"
        except DeepConfError as exc:
            # The cause, without the give-up preamble every row shares.
            verdict, detail = "failed loudly", str(exc).split("the first error was: ")[-1]
        else:
            verdict, detail = _judge(result)
        finally:
            await backend.aclose()
    records = [t.record for t in read_traces(path)] if path.exists() else []
    launched = max((r.index for r in records), default=-1) + 1
    if len(records) != launched and verdict != "HUNG":
        verdict, detail = "WRONG", f"{launched - len(records)} launched trace(s) not recorded"
    elapsed = time.monotonic() - started
    return Row(fault.name, share, verdict, detail, f"{len(records)}/{launched}", elapsed)


def _judge(result: Any) -> tuple[str, str]:
    counted = [t for t in result.traces if t.finished]
    bad = [t for t in counted if t.finish_reason is None or t.tokens == 0]
    confs = [c for t in result.traces for c in t.token_confs.tolist()]
    numbers = [result.threshold, result.beta, *confs]
    if any(x is not None and not math.isfinite(x) for x in numbers):
        return "WRONG", "a NaN or infinite threshold, beta or confidence"
    if bad:
        return "WRONG", f"{len(bad)} counted trace(s) without a finish reason or tokens"
    if result.answer != RIGHT:
        return "WRONG", f"answered {result.answer!r}, the right answer is {RIGHT}"
    failed = sum(t.status is TraceStatus.FAILED for t in result.traces)
    return "answered", f"{RIGHT}; {failed} failed trace(s) recorded and replaced"


async def run_matrix(only: str | None = None) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fault in FAULTS:
            if only and only not in fault.name:
                continue
            shares = [True] if fault.every_trace_only else [True, False]
            for every in shares:
                rows.append(await run_fault(replace(fault), every, Path(tmp)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the faults whose name contains this")
    args = parser.parse_args(argv)
    # The server side of a fault (a cut connection) makes asyncio log every failed send.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    rows = asyncio.run(run_matrix(args.only))
    print(f"{'fault':18} {'share':12} {'verdict':14} {'traces':>7} {'time':>6}  detail")
    for r in rows:
        detail = r.detail if len(r.detail) <= 240 else r.detail[:237] + "..."
        print(
            f"{r.fault:18} {r.share:12} {r.verdict:14} {r.accounted:>7} {r.seconds:5.1f}s  {detail}"
        )
    broken = [r for r in rows if r.verdict in ("WRONG", "HUNG")]
    print(f"\n{len(rows)} runs, {len(broken)} wrong or hung")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
