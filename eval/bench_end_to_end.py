"""Benchmark: tokens per CPU-second end to end, `deepconf solve` beside an openai SDK client.

`deepconf bench stream --end-to-end` starts the replay server (eval/replay_server.py: vLLM
chat chunks, 1 token per chunk, top-20 logprobs, sent as fast as a socket takes them) in its
own process, then runs three clients against it, each a process of its own, one after the
other, best of `--repeats`:

    deepconf      `deepconf solve --mode offline --budget N --concurrency C --json`: raw SSE
                  bytes to a voted answer, start-up (imports, probe-less open) included
    without C     the same solve with DEEPCONF_NO_C=1: every read in Python and msgspec,
                  none through backends/_chunkscan.c and _framing.c
    openai SDK    AsyncOpenAI, the same N requests, C at a time, stream=True, top_logprobs=k,
                  each token's confidence (-mean of its top-k logprobs) appended to a list:
                  what a minimal DeepConf client written on the SDK does

Each client's CPU time (user + system) is what `getrusage(RUSAGE_CHILDREN)` gains when it is
reaped, so the server's own CPU never counts (it is reaped at the end); the server's CPU in
the same span is printed beside it. Tokens are what each client counted itself; the run
fails when either counted fewer than N x tokens.

Who sets the pace: on a 2-core machine the server and the client each take a core, and a
client that keeps up with its server never idles (its wall time equals its CPU time) however
cheap its reads, so its tokens per CPU-second would then say how fast the server writes. The
replay server hands the socket chunks framed once (eval/replay_server.py) and spends about a
third of deepconf's CPU per token even writing one event per write, as a GPU server does: it
runs ahead, the client's reads carry what piled up (as a client behind a fleet's servers
reads), and the figure is the client's own. `--events-per-write 16` sends the same events 16
to a write, which spares the server's CPU where it shares cores with several clients.
`--token-delay` paces every stream instead, one token per read: the cost per read.

    deepconf bench stream --end-to-end                                 # 128 x 2000, 32 in flight
    deepconf bench stream --end-to-end --events-per-write 16           # less server CPU
    deepconf bench stream --end-to-end --token-delay 0.005             # one token per read
    deepconf bench stream --end-to-end --traces 4 --tokens 50 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from deepconf.backends import native
from deepconf.eval.serve_processes import CLI, _Process, free_port

K = 20
DEEPCONF = "deepconf solve"
DEEPCONF_NO_C = "without C"  # DEEPCONF_NO_C=1: every read in Python
REPLAY = "from deepconf.eval.replay_server import main; main()"
SDK = "from deepconf.eval.bench_end_to_end import sdk_main; sdk_main()"


class ReplayServer(_Process):
    """`python -m deepconf.eval.replay_server` on a free loopback port, started and up;
    `token_delay` > 0 paces every stream at one event per that many seconds, and each write
    carries `events_per_write` events."""

    def __init__(self, token_delay: float = 0.0, events_per_write: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        flags = ["--port", str(self.port), "--token-delay", repr(token_delay)]
        flags += ["--events-per-write", str(events_per_write)]
        super().__init__([REPLAY, *flags], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the replay server exited: {self.log_text()[-2000:]}")
            try:
                if httpx.get(self.base_url + "/models", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # start-up poll
        self.close()
        raise RuntimeError("the replay server did not answer /v1/models in time")

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Run:
    client: str
    tokens: int
    cpu_s: float
    wall_s: float
    server_cpu_s: float = 0.0  # the replay server's, in the same span

    @property
    def per_cpu_s(self) -> float:
        return self.tokens / self.cpu_s


def timed_child(
    name: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[str, float, float]:
    """Run a child to its end: (its stdout, its CPU seconds, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, cpu, wall


def run_deepconf(
    base_url: str, traces: int, tokens: int, concurrency: int, *, c_parts: bool = True
) -> Run:
    args = [sys.executable, "-P", "-c", CLI, "solve", "--base-url", base_url]
    args += ["--mode", "offline", "--budget", str(traces), "--concurrency", str(concurrency)]
    args += ["--max-tokens", str(tokens), "--no-probe", "--top-logprobs", str(K)]
    args += ["--seed", "0", "--json", "q"]
    name = DEEPCONF if c_parts else DEEPCONF_NO_C
    env = {**os.environ, native.SWITCH: "0" if c_parts else "1"}
    out, cpu, wall = timed_child(name, args, env)
    result = json.loads(out)
    if result["answer"] != "42":
        raise RuntimeError(f"{name} answered {result['answer']!r}, not 42")
    return Run(name, int(result["tokens"]["total"]), cpu, wall)


def run_deepconf_no_c(base_url: str, traces: int, tokens: int, concurrency: int) -> Run:
    """The same solve with the C parts switched off (backends/native.py): Python alone."""
    return run_deepconf(base_url, traces, tokens, concurrency, c_parts=False)


def run_sdk(base_url: str, traces: int, tokens: int, concurrency: int) -> Run:
    args = [sys.executable, "-P", "-c", SDK, base_url, str(traces), str(tokens)]
    out, cpu, wall = timed_child("the openai SDK client", [*args, str(concurrency)])
    return Run("openai SDK", int(out.split()[-1]), cpu, wall)


# --- the baseline client, run in its own process ------------------------------------------


async def sdk_client(base_url: str, traces: int, tokens: int, concurrency: int) -> int:
    """The same requests through AsyncOpenAI; returns the tokens it scored."""
    import openai

    # A flat 600 s, connect included: the SDK's 5 s connect timeout fired on loaded cores
    # (its loop busy with the other streams), and timeouts cost no CPU either way.
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> list[float]:
        confs: list[float] = []
        async with gate:
            stream = await client.chat.completions.create(
                model="replay-model",
                messages=[{"role": "user", "content": "q"}],
                stream=True,
                logprobs=True,
                top_logprobs=K,
                max_tokens=tokens,
                seed=i,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.logprobs and choice.logprobs.content:
                            for c in choice.logprobs.content:
                                tops = c.top_logprobs
                                confs.append(-sum(t.logprob for t in tops) / len(tops))
        return confs

    try:
        results = await asyncio.gather(*(one(i) for i in range(traces)))
    finally:
        await client.close()
    return sum(len(c) for c in results)


def sdk_main() -> None:
    base_url, traces, tokens, concurrency = sys.argv[1], *map(int, sys.argv[2:5])
    print(asyncio.run(sdk_client(base_url, traces, tokens, concurrency)))


# --- harness ------------------------------------------------------------------------------


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.per_cpu_s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=128, help="traces (requests) per client")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per trace")
    ap.add_argument("--concurrency", type=int, default=32, help="streams in flight")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per client")
    ap.add_argument(
        "--events-per-write",
        type=int,
        default=1,
        help="SSE events per server write (1: as a GPU server writes; 16: the server's CPU"
        " per token drops and it runs ahead of the client, whose figure is then its own)",
    )
    ap.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds between two events of a stream (0: as fast as the socket takes them;"
        " e.g. 0.005 paces each stream as a busy GPU does, so every read holds one token)",
    )
    args = ap.parse_args(argv)
    if args.events_per_write < 1:
        ap.error("--events-per-write must be at least 1")
    n, t, c = args.traces, args.tokens, args.concurrency
    want = n * t
    pace = f"one event per {args.token_delay:g} s" if args.token_delay else "unpaced"
    pace += f", {args.events_per_write} event(s) per write"
    print(
        f"end to end: {n} traces x {t} tokens, {c} in flight, 1 token per chunk, k={K},"
        f" replay server ({pace}) in its own process; best of {args.repeats}, CPU = user +"
        " sys of the client process, start-up included"
    )
    runs: dict[str, list[Run]] = {DEEPCONF: [], DEEPCONF_NO_C: [], "openai SDK": []}
    with ReplayServer(args.token_delay, args.events_per_write) as server:
        for _ in range(args.repeats):
            for run in (run_deepconf, run_deepconf_no_c, run_sdk):  # interleaved: one machine
                server_before = server.cpu_seconds()
                r = run(server.base_url, n, t, c)
                r.server_cpu_s = server.cpu_seconds() - server_before
                if r.tokens < want:
                    raise RuntimeError(f"{r.client} counted {r.tokens} tokens, not {want}")
                runs[r.client].append(r)
    row = "  {:16s} {:>10s} {:>8s} {:>8s} {:>14s} {:>9s}  {}"
    head = "client", "tokens", "CPU s", "wall s", "tokens/CPU-s", "server s", "all repeats"
    print(row.format(*head))
    for name, rs in runs.items():
        b = best(rs)
        every = ", ".join(f"{r.per_cpu_s:,.0f}" for r in rs)
        cells = f"{b.tokens:,}", f"{b.cpu_s:.2f}", f"{b.wall_s:.2f}", f"{b.per_cpu_s:,.0f}"
        print(row.format(name, *cells, f"{b.server_cpu_s:.2f}", every))
    ratio = best(runs[DEEPCONF]).per_cpu_s / best(runs["openai SDK"]).per_cpu_s
    print(f"  deepconf / SDK: {ratio:.1f}x tokens per CPU-second")
    c_ratio = best(runs[DEEPCONF]).per_cpu_s / best(runs[DEEPCONF_NO_C]).per_cpu_s
    print(f"  deepconf / deepconf without C (DEEPCONF_NO_C=1): {c_ratio:.2f}x")


if __name__ == "__main__":
    main()
