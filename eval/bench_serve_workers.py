"""`deepconf bench serve-workers` (or `python -m deepconf.eval.bench_serve_workers`): what
`serve --workers N` buys, measured side by side in one run.

`deepconf serve` runs in front of replay servers (eval/replay_server.py: vLLM-shaped chat
chunks, one token each with top-20 logprobs, no model behind them), once with one worker and
once with N, alternating (1, N, 1, N, ...) so a machine that slows down midway weighs on
both alike; each side is a fresh serve process, timed once it answers /health. C clients
(the openai SDK's async client, as users call serve) send R chat completions, each one
offline solve of B traces x T tokens: every trace runs to max_tokens, so both sides read
the same tokens, counted from each answer's `usage`. `--max-concurrent-solves` is 2C times
N, so no worker turns a request away whichever connections it accepted (a 429 would measure
the retry pause, not the throughput: the client does not retry, so one ends the run).

Printed (bench_workers.report's table): each run's wall seconds over the R requests, tokens,
tokens per second, the CPU seconds of serve (the parent and its workers; then each worker's,
which shows how evenly the connections fell) and of the replay servers in the same span;
then the throughput ratio (N workers over one) per repetition and its median, and how busy
the cores were in each N-worker run (bench_workers.cores_used). The replay servers, the
clients and serve share this machine's cores, where a real fleet's GPUs use none of
serve's CPU: so the servers send each stream by sendfile (`--no-sendfile`: by writes), the
same bytes for half their CPU. A connection stays with the worker that accepted it, so
with a few kept-alive client connections one worker may hold more of them: each worker's
CPU shows it.

    deepconf bench serve-workers                    # 2 workers, 32 requests x 32 traces x 2,000
    deepconf bench serve-workers --requests 2 --budget 4 --tokens 50 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack

from deepconf.eval.bench_workers import (
    Measured,
    ReplayServer,
    children_of,
    cores_used,
    cpu_seconds_of,
    report,
)
from deepconf.eval.replay_server import MODEL
from deepconf.eval.serve_processes import Served, serve


def family_cpu_seconds(pid: int) -> list[float]:
    """CPU seconds so far of a process and of each of its live children: with `serve
    --workers N`, the parent and then its workers."""
    return [cpu_seconds_of(each) for each in [pid, *children_of(pid)]]


async def load(base_url: str, requests: int, clients: int, budget: int, tokens: int) -> int:
    """`requests` solves, `clients` at a time, through the openai client; the completion
    tokens they spent."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    left = iter(range(requests))
    spent = 0

    async def client_loop() -> None:
        nonlocal spent
        for i in left:
            answer = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Problem {i}: what is 6 x 7?"}],
                max_tokens=tokens,
                seed=i,
                extra_body={"deepconf": {"mode": "offline", "budget": budget}},
            )
            assert answer.usage is not None
            spent += answer.usage.completion_tokens

    try:
        await asyncio.gather(*(client_loop() for _ in range(clients)))
    finally:
        await client.close()
    return spent


def run_one(args: argparse.Namespace, servers: list[ReplayServer], workers: int) -> Measured:
    # Each worker may run 2C solves: all C requests in flight may reach one worker, and a
    # solve holds its slot until its clean-up, a moment after its client has the answer.
    flags = ["--workers", str(workers), "--max-concurrent-solves", str(2 * args.clients * workers)]
    for extra in servers[1:]:
        flags += ["--upstream", extra.base_url]
    with serve(servers[0].base_url, flags) as served:
        return _timed(args, servers, served, workers)


def _timed(
    args: argparse.Namespace, servers: list[ReplayServer], served: Served, workers: int
) -> Measured:
    url = served.root + "/v1"
    # A first solve per worker pays its lazy set-up (imports, the upstream pool): C x N tiny
    # solves at once, outside the timing, reach every worker in practice.
    asyncio.run(load(url, args.clients * workers, args.clients * workers, 1, 8))
    cpu_before = family_cpu_seconds(served.pid)
    server_before = sum(s.cpu_seconds() for s in servers)
    started = time.perf_counter()
    tokens = asyncio.run(load(url, args.requests, args.clients, args.budget, args.tokens))
    seconds = time.perf_counter() - started
    each = [b - a for a, b in zip(cpu_before, family_cpu_seconds(served.pid), strict=True)]
    server_cpu = sum(s.cpu_seconds() for s in servers) - server_before
    # One worker is the serve process itself ("in process"); N: the parent, then workers.
    return Measured(workers, seconds, tokens, sum(each), server_cpu, each[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="workers of the side compared to 1")
    ap.add_argument("--requests", type=int, default=32, help="chat completions per run")
    ap.add_argument("--clients", type=int, default=8, help="requests in flight")
    ap.add_argument("--budget", type=int, default=32, help="traces per request")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per trace")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side")
    ap.add_argument("--servers", type=int, default=2, help="replay servers (each a process)")
    ap.add_argument(
        "--events-per-write", type=int, default=16, help="SSE events per replay-server write"
    )
    ap.add_argument(
        "--no-sendfile",
        action="store_true",
        help="the servers write each stream's chunks instead of sending it by sendfile",
    )
    args = ap.parse_args(argv)
    if args.workers < 2 or min(args.requests, args.clients, args.budget, args.tokens) < 1:
        ap.error("--workers must be at least 2; the other counts at least 1")
    if min(args.repeats, args.servers, args.events_per_write) < 1:
        ap.error("--repeats, --servers and --events-per-write must be at least 1")
    print(
        f"serve: {args.requests} requests x {args.budget} traces x {args.tokens:,} tokens,"
        f" {args.clients} in flight, against {args.servers} replay server(s)"
        f" ({args.events_per_write} event(s) per write"
        f"{', written' if args.no_sendfile else ', by sendfile'}); 1 and {args.workers} workers"
        f" alternate, {args.repeats} run(s) each"
    )
    with ExitStack() as stack:
        sendfile = not args.no_sendfile
        servers = [ReplayServer(args.events_per_write, sendfile) for _ in range(args.servers)]
        for server in servers:
            stack.callback(server.close)
        runs = []
        for _ in range(args.repeats):
            for workers in (1, args.workers):
                runs.append(run_one(args, servers, workers))
        report(runs, args.workers, f"serve --workers {args.workers}")
        cores_used(runs, args.workers)


if __name__ == "__main__":
    main()
