"""`deepconf bench memory`: the client's peak resident memory at fleet scale (issue 13, item 3).

Two workloads against the replay server (eval/replay_server.py: vLLM chat chunks, 1 token
per chunk, top-20 logprobs, in its own process), each client a process of its own whose peak
RSS is its own `ru_maxrss`, read by `os.wait4` when it is reaped (exact, and never the
server's):

    one big solve   `deepconf solve --mode offline --budget 512 --max-tokens 32000
                    --save-traces FILE`, `--concurrency` traces in flight. Bound: 1 GB. The
                    trace file is read every 0.5 s while it runs; when its first line came
                    and how many lines it had at half the wall time are printed (traces are
                    written as they end, so with 8 waves of 64 it grows wave by wave).
    many in flight  `--solves` concurrent solves of `--per-solve` traces each in ONE process
                    (the Python API over one shared HTTP backend, as `deepconf serve` holds
                    them), against a replay server paced at one token per `--token-delay`
                    seconds per stream, so every trace is open at once. Bound: 2 GB at
                    10,000 traces in flight; the client counts the streams open at once
                    (first token received, not yet ended) and must reach solves x per-solve.

The bounds are checked, not just printed: a bound exceeded, a wrong answer, a missing trace
line, a part over `--timeout` or an in-flight count short of its target exits 1 with the
reason. The second part
needs solves x per-solve sockets in each of two processes: the soft file limit is raised to
the hard one, and the run stops at once when that is too low.

    deepconf bench memory                  # 512 x 32,000 (64 in flight), then 20 x 500 in flight
    deepconf bench memory --only solve --traces 16 --tokens 2000 --concurrency 16   # smoke runs
    deepconf bench memory --only flight --solves 4 --per-solve 50 --flight-tokens 20 \
        --token-delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deepconf.backend import Backend, TokenBatch, TraceRequest
from deepconf.eval.bench_end_to_end import ReplayServer
from deepconf.eval.serve_processes import CLI, rss_mb

K = 20
POLL_S = 0.5  # how often the trace file is read while the solve runs
FLIGHT = "from deepconf.eval.bench_memory import flight_main; flight_main()"
FD_MARGIN = 256  # descriptors besides the sockets: the interpreter's, the listener, logs


@dataclass
class Reaped:
    """A child run to its end: its output, exit code, wall seconds and peak RSS."""

    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    peak_mb: float
    timed_out: bool

    def failure(self, name: str, timeout: float) -> str | None:
        if self.timed_out:
            return f"{name} did not finish within --timeout {timeout:g} s and was killed"
        if self.returncode != 0:
            return f"{name} exited {self.returncode}: {self.stderr[-2000:]}"
        return None


def run_measured(args: list[str], timeout: float, tick: Callable[[float], None]) -> Reaped:
    """Run a child, calling `tick(elapsed)` every POLL_S until it exits; reap it with
    `os.wait4`, whose rusage is that child's alone (ru_maxrss: its peak RSS, KiB on Linux)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        started = time.perf_counter()
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            elapsed = time.perf_counter() - started
            if pid:
                break
            if elapsed > timeout:
                timed_out = True
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            tick(elapsed)
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        tick(elapsed)
        peak_mb = usage.ru_maxrss / 1024
        return Reaped(_read(out), _read(err), proc.returncode, elapsed, peak_mb, timed_out)


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


class LineCounter:
    """Counts the lines of a file that grows, reading only what was appended since the last
    count; keeps (elapsed, lines) at every count."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0
        self.samples: list[tuple[float, int]] = []

    def __call__(self, elapsed: float) -> None:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self.offset)
            while chunk := f.read(1 << 20):
                self.lines += chunk.count(b"\n")
                self.offset += len(chunk)
        self.samples.append((elapsed, self.lines))

    def first_line_s(self) -> float | None:
        return next((t for t, n in self.samples if n > 0), None)

    def lines_at(self, elapsed: float) -> int:
        return max((n for t, n in self.samples if t <= elapsed), default=0)


# --- part A: one big solve ------------------------------------------------------------------


def one_big_solve(args: argparse.Namespace, failed: list[str]) -> None:
    n, t, c, delay = args.traces, args.tokens, args.concurrency, args.solve_token_delay
    pace = f"a token every {delay:g} s per stream" if delay else "as fast as the socket takes"
    print(
        f"one big solve: `deepconf solve --mode offline`, {n:,} traces x {t:,} tokens,"
        f" {c:,} in flight, trace file saved; replay server in its own process, {pace}"
    )
    server = ReplayServer(delay)
    with server, tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path = Path(tmp) / "traces.jsonl"
        command = [sys.executable, "-P", "-c", CLI, "solve", "--base-url", server.base_url]
        command += ["--mode", "offline", "--budget", str(n), "--concurrency", str(c)]
        command += ["--max-tokens", str(t), "--no-probe", "--top-logprobs", str(K)]
        command += ["--seed", "0", "--save-traces", str(path), "--json", "q"]
        counter = LineCounter(path)
        run = run_measured(command, args.timeout, counter)
    if why := run.failure("deepconf solve", args.timeout):
        failed.append(why)
        return
    result = json.loads(run.stdout)
    tokens, first = int(result["tokens"]["total"]), counter.first_line_s()
    row = "  {:34s} {}"
    print(row.format("tokens generated", f"{tokens:,} (of {n * t:,})"))
    print(row.format("peak RSS of the solve", _against(run.peak_mb, args.solve_max_rss_mb)))
    print(row.format("wall time, start-up included", f"{run.wall_s:.1f} s"))
    print(row.format("first trace line in the file at", f"{first or float('nan'):.1f} s"))
    half = counter.lines_at(run.wall_s / 2)
    print(row.format("trace lines at half the wall time", f"{half:,} of {n:,}"))
    print(row.format("trace lines at the end", f"{counter.lines:,}"))
    _must(failed, result["answer"] == "42", f"the solve answered {result['answer']!r}, not 42")
    _must(failed, tokens == n * t, f"the solve generated {tokens:,} tokens, not {n * t:,}")
    _must(failed, len(result["traces"]) == n, f"the result has {len(result['traces'])} traces")
    _must(failed, counter.lines == n, f"the trace file has {counter.lines} lines, not {n}")
    _bound(failed, "solve", run.peak_mb, args.solve_max_rss_mb)


# --- part B: many traces in flight ----------------------------------------------------------


def many_in_flight(args: argparse.Namespace, failed: list[str]) -> None:
    s, b, t, delay = args.solves, args.per_solve, args.flight_tokens, args.token_delay
    target = s * b
    print(
        f"many in flight: {s:,} concurrent solves x {b:,} traces x {t:,} tokens in one"
        f" process, a token every {delay:g} s per stream: {target:,} traces in flight;"
        f" HttpBackendConfig.max_connections={target:,} (its default, 4,096, caps the"
        " streams open at once)"
    )
    limit = file_limit(target + FD_MARGIN)
    if limit < target + FD_MARGIN:
        failed.append(
            f"the file limit is {limit:,} descriptors, too few for {target:,} sockets: raise"
            f" the hard limit (ulimit -Hn) to at least {target + FD_MARGIN:,}"
        )
        return
    with ReplayServer(delay) as server:
        command = [sys.executable, "-P", "-c", FLIGHT, server.base_url, str(s), str(b), str(t)]
        run = run_measured(command, args.timeout, lambda _: None)
    if why := run.failure("the in-flight client", args.timeout):
        failed.append(why)
        return
    seen = json.loads(run.stdout)
    most, base = seen["most_in_flight"], seen["rss_before_mb"]
    row = "  {:34s} {}"
    print(row.format("most traces in flight at once", f"{most:,} (target {target:,})"))
    print(row.format("tokens generated", f"{seen['tokens']:,} (of {target * t:,})"))
    print(row.format("peak RSS of the client", _against(run.peak_mb, args.flight_max_rss_mb)))
    print(row.format("RSS before the first trace", f"{base:,.1f} MB"))
    per_trace = (run.peak_mb - base) * 1024 / max(most, 1)
    print(row.format("per trace in flight", f"{per_trace:,.1f} KB above that"))
    print(row.format("wall time, start-up included", f"{run.wall_s:.1f} s"))
    wrong = [a for a in seen["answers"] if a != "42"]
    _must(failed, not wrong, f"{len(wrong)} solve(s) did not answer 42: {wrong[:3]}")
    _must(failed, most >= target, f"only {most:,} traces were in flight at once, not {target:,}")
    _must(failed, seen["tokens"] == target * t, f"{seen['tokens']:,} tokens, not {target * t:,}")
    _bound(failed, "flight", run.peak_mb, args.flight_max_rss_mb)


def file_limit(need: int) -> int:
    """The soft file limit, raised to the hard one when it is below `need` (the children
    inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and soft != hard:
        soft = need if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- the in-flight client, run in its own process --------------------------------------------


class OpenStreams:
    """A shared backend seen by many solves, counting the streams open at once: from a
    trace's first token to its stream's end."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.open_now = self.most = 0

    @property
    def model(self) -> str:
        return self._backend.model

    async def open(self) -> None:
        await self._backend.open()

    async def aclose(self) -> None:
        """Nothing: the shared backend outlives the solves."""

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        counted = False
        try:
            async with contextlib.aclosing(self._backend.stream(request)) as stream:
                async for batch in stream:
                    if not counted:
                        counted = True
                        self.open_now += 1
                        self.most = max(self.most, self.open_now)
                    yield batch
        finally:
            self.open_now -= counted


async def in_flight(base_url: str, solves: int, per_solve: int, tokens: int) -> dict[str, Any]:
    from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
    from deepconf.config import DeepConfConfig, SamplingConfig
    from deepconf.controller import DeepConf

    http = OpenAIHttpBackend(
        HttpBackendConfig(
            base_urls=[base_url], probe=False, top_logprobs=K, max_connections=solves * per_solve
        )
    )
    shared = OpenStreams(http)
    config = DeepConfConfig(
        mode="offline",
        budget=per_solve,
        concurrency=per_solve,
        sampling=SamplingConfig(max_tokens=tokens, seed=0),
    )
    try:
        await shared.open()
        before = rss_mb(os.getpid())
        results = await asyncio.gather(
            *(DeepConf(shared, config).solve("q", problem_id=f"p{i}") for i in range(solves))
        )
    finally:
        await http.aclose()
    return {
        "most_in_flight": shared.most,
        "rss_before_mb": before,
        "tokens": sum(r.tokens.total for r in results),
        "answers": [r.answer for r in results],
    }


def flight_main() -> None:
    base_url, solves, per_solve, tokens = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(asyncio.run(in_flight(base_url, solves, per_solve, tokens))))


# --- harness --------------------------------------------------------------------------------


def _against(mb: float, bound_mb: float) -> str:
    return f"{mb:,.1f} MB (bound {bound_mb:,.0f} MB: {'ok' if mb <= bound_mb else 'EXCEEDED'})"


def _must(failed: list[str], ok: bool, why: str) -> None:
    if not ok:
        failed.append(why)


def _bound(failed: list[str], part: str, mb: float, bound_mb: float) -> None:
    flag = f"--{part}-max-rss-mb"
    _must(failed, mb <= bound_mb, f"peak RSS {mb:,.1f} MB exceeds the {flag} bound {bound_mb:g} MB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("solve", "flight"), help="run one part (default: both)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per part before it fails")
    # One big solve
    ap.add_argument("--traces", type=int, default=512, help="one big solve: its trace budget")
    ap.add_argument("--tokens", type=int, default=32000, help="one big solve: tokens per trace")
    ap.add_argument("--concurrency", type=int, default=64, help="one big solve: in flight")
    ap.add_argument(
        "--solve-token-delay",
        type=float,
        default=0.0,
        help="one big solve: s between tokens (default 0: as fast as the socket takes, so"
        " the client reads several tokens at once; > 0: one per read, as from a GPU)",
    )
    ap.add_argument("--solve-max-rss-mb", type=float, default=1024, help="its bound")
    # Many traces in flight
    ap.add_argument("--solves", type=int, default=20, help="in flight: concurrent solves")
    ap.add_argument("--per-solve", type=int, default=500, help="in flight: traces per solve")
    ap.add_argument("--flight-tokens", type=int, default=300, help="in flight: tokens per trace")
    ap.add_argument("--token-delay", type=float, default=0.5, help="in flight: s between tokens")
    ap.add_argument("--flight-max-rss-mb", type=float, default=2048, help="its bound")
    args = ap.parse_args(argv)
    failed: list[str] = []
    if args.only in (None, "solve"):
        one_big_solve(args, failed)
    if args.only in (None, "flight"):
        many_in_flight(args, failed)
    print(
        "  all bounds hold" if not failed else "  FAILED:\n" + "\n".join(f"  - {w}" for w in failed)
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
