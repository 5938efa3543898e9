"""`deepconf bench serve`: a load test of `deepconf serve` that stops by itself.

`deepconf serve` runs as its own process in front of the scripted upstream (another process).
C client coroutines (default 64) send R requests (default 2,000) through it: half streamed,
some abandoned midway (a streamed one after its first chunk, a plain one after 5 ms), and a
429 retried after a short pause, as an OpenAI client does. Side by side in the same run, the
same number of clients do the same work straight against the upstream (each request's B
traces, fanned out by hand, as many at once as serve admits solves), so "added" latency is
serve's p50/p99 minus the upstream's own for the same traces under the same load. All three
processes share this machine's cores: the figures include serve's CPU competing with the
upstream's, as they would on one box.

Printed: p50/p99 latency direct and through serve and their difference, requests answered,
429s, 5xx (must be 0), disconnects, serve's resident memory after warm-up and at the end
(stable within 20 MB), and upstream streams still open once serve is idle (must be 0). Exit
status 1 when a "must" fails.

    deepconf bench serve                                  # 64 clients, 2,000 requests
    deepconf bench serve --clients 8 --requests 100 --warmup 20 --direct 40   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from deepconf.eval.scripted_server import MODEL
from deepconf.eval.serve_processes import Served, Upstream, percentile, serve

ASK = [{"role": "user", "content": "What is 3+4?"}]
RETRY_429 = 0.05  # seconds a client waits before retrying a 429 (serve says Retry-After: 1)
ABANDON_PLAIN = 0.005  # a plain request given up on after this long


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # answered requests, seconds
    outcomes: Counter[str] = field(default_factory=Counter)  # ok, disconnected, 4xx, 5xx, ...
    retried_429: int = 0
    reconnects: int = 0  # tries that met a kept-alive connection closed under them


async def _through_serve(
    http: httpx.AsyncClient, stream: bool, abandon: bool, budget: int, tally: Tally
) -> None:
    body = {"model": MODEL, "messages": ASK, "stream": stream, "deepconf": {"budget": budget}}
    while True:
        started = time.perf_counter()
        try:
            outcome = await _attempt(http, body, stream, abandon)
        except httpx.TransportError:
            # No answer: a kept-alive connection the server closed as it was reused (serve
            # closes idle ones after --header-timeout, as uvicorn does). A client retries.
            tally.reconnects += 1
            continue
        if outcome != "429":
            break
        tally.retried_429 += 1
        await asyncio.sleep(RETRY_429)
    tally.outcomes[outcome] += 1
    if outcome == "ok" and not abandon:
        tally.latencies.append(time.perf_counter() - started)


async def _attempt(
    http: httpx.AsyncClient, body: dict[str, object], stream: bool, abandon: bool
) -> str:
    """One try: "ok", "429", "disconnected" (abandoned), or what went wrong."""
    if stream:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 429:
                await r.aread()
                return "429"
            try:
                return await _read_stream(r, abandon)
            except httpx.TransportError:
                return "cut"  # the stream broke after its headers: serve's fault
    if abandon:
        try:
            await asyncio.wait_for(http.post("/v1/chat/completions", json=body), ABANDON_PLAIN)
            return "ok"  # answered before the client gave up
        except TimeoutError:
            return "disconnected"
    r = await http.post("/v1/chat/completions", json=body)
    if r.status_code == 429:
        return "429"
    return "ok" if r.status_code == 200 and "deepconf" in r.json() else _kind(r)


async def _read_stream(r: httpx.Response, abandon: bool) -> str:
    if r.status_code != 200:
        await r.aread()
        return _kind(r)
    async for line in r.aiter_lines():
        if abandon and line.startswith("data:"):
            return "disconnected"  # leaving `stream` closes the connection mid-solve
        if line.startswith('data: {"error"'):
            return "stream_error"
        if line == "data: [DONE]":
            return "ok"
    return "cut"  # the body ended without [DONE]


def _kind(r: httpx.Response) -> str:
    return "5xx" if r.status_code >= 500 else f"{r.status_code}"


async def _direct(
    http: httpx.AsyncClient, budget: int, slots: asyncio.Semaphore, tally: Tally
) -> None:
    """One request's traces straight to the upstream: `budget` streams at once, as a solve
    sends them (top-20 logprobs), each read to its end. `slots` admits as many at once as
    serve runs solves (--max-concurrent-solves), so the upstream sees the same load."""
    body = {"model": MODEL, "messages": ASK, "stream": True, "logprobs": True, "top_logprobs": 20}

    async def trace(seed: int) -> None:
        while True:
            try:
                async with http.stream(
                    "POST", "/v1/chat/completions", json={**body, "seed": seed}
                ) as r:
                    async for _ in r.aiter_bytes():
                        pass
                return
            except httpx.TransportError:  # a kept-alive connection closed as it was reused
                tally.reconnects += 1

    async with slots:
        started = time.perf_counter()
        await asyncio.gather(*(trace(i) for i in range(budget)))
        tally.latencies.append(time.perf_counter() - started)
    tally.outcomes["ok"] += 1


async def _drive(clients: int, requests: int, work: Callable[[int], Awaitable[None]]) -> None:
    """`clients` coroutines doing `work(i)` until `requests` are done."""
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(client() for _ in range(clients)))


async def run_load(args: argparse.Namespace, up: Upstream, px: Served) -> dict[str, object]:
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=args.clients * (args.budget + 1))
    timeout = httpx.Timeout(120.0)
    async with (
        httpx.AsyncClient(base_url=px.root, limits=limits, timeout=timeout) as via_serve,
        httpx.AsyncClient(base_url=up.root, limits=limits, timeout=timeout) as direct,
    ):
        warm = Tally()
        await _drive(
            args.clients,
            args.warmup,
            lambda i: _through_serve(via_serve, i % 2 == 0, False, args.budget, warm),
        )
        rss_before = px.rss_mb()
        base = Tally()
        slots = asyncio.Semaphore(args.max_solves)
        up_cpu = up.cpu_seconds()
        began = time.perf_counter()
        await _drive(args.clients, args.direct, lambda i: _direct(direct, args.budget, slots, base))
        base_wall = time.perf_counter() - began
        cpu = {"direct upstream": up.cpu_seconds() - up_cpu}
        up_cpu, px_cpu = up.cpu_seconds(), px.cpu_seconds()
        load = Tally()
        began = time.perf_counter()
        await _drive(
            args.clients,
            args.requests,
            lambda i: _through_serve(
                via_serve, i % 2 == 0, rng.random() < args.disconnect, args.budget, load
            ),
        )
        wall = time.perf_counter() - began
        cpu["upstream"] = up.cpu_seconds() - up_cpu
        cpu["serve"] = px.cpu_seconds() - px_cpu
    idle = _wait(lambda: px.health()["active_solves"] == 0)
    _wait(lambda: up.running() == 0)  # cancelled solves close their streams: give it time
    open_streams = up.running()
    return {
        "base": base,
        "load": load,
        "wall": wall,
        "base_wall": base_wall,
        "cpu": cpu,
        "rss_before": rss_before,
        "rss_after": px.rss_mb(),
        "idle": idle,
        "open_streams": open_streams,
    }


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling a finished run's gauges, not a measurement
    return True


def report(args: argparse.Namespace, r: dict[str, object]) -> bool:
    """Print the figures; True when every "must" holds."""
    base, load = r["base"], r["load"]
    assert isinstance(base, Tally) and isinstance(load, Tally)
    ms = {
        name: (percentile(t.latencies, 50) * 1000, percentile(t.latencies, 99) * 1000)
        for name, t in (("direct", base), ("serve", load))
    }
    fivexx = load.outcomes["5xx"] + load.outcomes["stream_error"] + load.outcomes["cut"]
    growth = float(r["rss_after"]) - float(r["rss_before"])  # type: ignore[arg-type]
    print(
        f"deepconf serve under load: {args.clients} clients, {args.requests} requests"
        f" (half streamed, {args.disconnect:.0%} abandoned), budget {args.budget} traces of"
        f" {args.tokens} tokens, --max-concurrent-solves {args.max_solves}"
    )
    rates = {
        "direct": sum(base.outcomes.values()) / float(r["base_wall"]),  # type: ignore[arg-type]
        "serve": sum(load.outcomes.values()) / float(r["wall"]),  # type: ignore[arg-type]
    }
    print(f"  {'':28s} {'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>7s}")
    for name, label in (("direct", "upstream direct (same work)"), ("serve", "through serve")):
        p50, p99 = ms[name]
        print(f"  {label:28s} {p50:9.1f} {p99:9.1f} {rates[name]:7.1f}")
    added = (ms["serve"][0] - ms["direct"][0], ms["serve"][1] - ms["direct"][1])
    print(f"  {'added by serve':28s} {added[0]:9.1f} {added[1]:9.1f}")
    cpu = r["cpu"]
    assert isinstance(cpu, dict)
    counts = {"direct upstream": args.direct, "upstream": args.requests, "serve": args.requests}
    per = {k: cpu[k] / counts[k] * 1000 for k in counts}
    print(
        f"  CPU per request: serve {per['serve']:.1f} ms, upstream {per['upstream']:.1f} ms"
        f" (direct: upstream {per['direct upstream']:.1f} ms)"
    )
    print(f"  answered {load.outcomes['ok']}, disconnected {load.outcomes['disconnected']},")
    print(f"  429s {load.retried_429} (each retried), 5xx {fivexx}")
    print(
        f"  client retries on closed keep-alive connections: {load.reconnects} (direct:"
        f" {base.reconnects})"
    )
    others = {k: v for k, v in load.outcomes.items() if k not in ("ok", "disconnected")}
    if others:
        print(f"  other outcomes: {dict(others)}")
    print(
        f"  serve RSS {r['rss_before']:.1f} MB after warm-up, {r['rss_after']:.1f} MB at the end"
        f" ({growth:+.1f} MB)"
    )
    print(f"  upstream streams still open at the end: {r['open_streams']}")
    musts = {
        "5xx == 0": fivexx == 0,
        "open streams == 0": r["open_streams"] == 0,
        "RSS within 20 MB": abs(growth) <= 20,
        "serve idle at the end": bool(r["idle"]),
    }
    failed = [name for name, ok in musts.items() if not ok]
    print("  all musts hold" if not failed else f"  FAILED: {', '.join(failed)}")
    return not failed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200, help="requests before memory is read")
    ap.add_argument("--direct", type=int, default=500, help="requests straight to the upstream")
    ap.add_argument("--disconnect", type=float, default=0.05, help="share of requests abandoned")
    ap.add_argument("--budget", type=int, default=4, help="traces per request (offline mode)")
    ap.add_argument("--tokens", type=int, default=12, help="tokens per trace")
    ap.add_argument("--delay", type=float, default=0.0, help="upstream seconds per token")
    ap.add_argument("--max-solves", type=int, default=None, help="default: 3/4 of --clients")
    args = ap.parse_args(argv)
    args.max_solves = args.max_solves or max(1, args.clients * 3 // 4)
    flags = ["--mode", "offline", "--budget", str(args.budget), "--concurrency"]
    flags += [str(args.budget), "--window", "2", "--max-concurrent-solves", str(args.max_solves)]
    with Upstream(args.tokens, args.delay) as up, serve(up.base_url, flags) as px:
        figures = asyncio.run(run_load(args, up, px))
    if not report(args, figures):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
