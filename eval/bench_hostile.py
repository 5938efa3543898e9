"""`deepconf bench hostile`: the attacks of issue 10, measured against real server processes.

- slowloris: `deepconf serve` at `ulimit -n 1024`; N half-open connections (default 1,100:
  a partial request head, one more header line every second, reopened whenever the server
  closes one) while a normal client asks /health on a new connection every 50 ms. /health
  p50/p99 and failures without and with the attack, and the server's log growth; side by
  side, the same server without its connection guard (plain uvicorn: the "before").
- model names: `deepconf serve` in front of an upstream that answers any name; N distinct
  names (default 1,000), one request each: serve's resident memory growth and the backends
  left open.
- huge body: `deepconf serve-model` (the bundled model) sent a 50 MB body with its length
  declared, then streamed without one, then a 7 MB prompt (under the body limit, far over
  the context): time to the refusal and resident memory growth for each.

    deepconf bench hostile                                  # all three, ~2 minutes
    deepconf bench hostile --only slowloris --connections 300 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from deepconf.eval.serve_processes import (
    UNGUARDED_CLI,
    Served,
    Upstream,
    percentile,
    serve,
)

ASK = [{"role": "user", "content": "What is 3+4?"}]
PROBE_EVERY = 0.05  # seconds between two /health probes of the normal client
PROBE_TIMEOUT = 5.0  # a probe not answered in this long counts as failed


# --- slowloris ---------------------------------------------------------------------------------


@dataclass
class Probes:
    latencies: list[float] = field(default_factory=list)  # answered probes, seconds
    failed: int = 0


def _probe(port: int) -> float | None:
    """One /health on a new connection, as a load balancer asks: seconds, or None."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError:
        return None
    return time.perf_counter() - started if reply.startswith(b"HTTP/1.1 200") else None


def _probe_for(port: int, seconds: float) -> Probes:
    probes = Probes()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        took = _probe(port)
        if took is None:
            probes.failed += 1
        else:
            probes.latencies.append(took)
        time.sleep(PROBE_EVERY)  # the normal client's pace
    return probes


class Slowloris:
    """N connections that never finish their request head; reopened when closed."""

    def __init__(self, port: int, connections: int) -> None:
        self.port, self.connections = port, connections
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._hold() for _ in range(self.connections)))

    async def _hold(self) -> None:
        while not self._stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 10
                )
                self.opened += 1
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                while not self._stop.is_set() and not reader.at_eof():
                    await asyncio.sleep(1.0)  # one more header line per second, for ever
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.001)  # notice a close
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
            finally:
                if writer is not None:
                    writer.close()


def bench_slowloris(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections)), hard))
    print(
        f"slowloris: {args.connections} half-open connections for {args.seconds:g} s against"
        f" `deepconf serve` at ulimit -n {args.file_limit}; /health on a new connection every"
        f" {PROBE_EVERY * 1000:.0f} ms (failed: no 200 within {PROBE_TIMEOUT:g} s)"
    )
    print(
        f"  {'server':34s} {'p50 ms':>8s} {'p99 ms':>8s} {'failed':>7s} {'probes':>7s}"
        f" {'log KB':>8s}"
    )
    variants = [("guarded", None)] + ([("unguarded (plain uvicorn)", UNGUARDED_CLI)] * args.compare)
    with Upstream(tokens=4) as up:
        for name, runner in variants:
            kw = {"runner": runner} if runner else {}
            with serve(up.base_url, [], file_limit=args.file_limit, **kw) as px:
                calm = _probe_for(px.port, args.seconds / 2)
                log_before = px.log_bytes()
                with Slowloris(px.port, args.connections) as attack:
                    under = _probe_for(px.port, args.seconds)
                log_kb = (px.log_bytes() - log_before) / 1024
                stats = px.health()["connections"] if runner is None else {}
            for label, p, kb in (
                (f"{name}, calm", calm, None),
                (f"{name}, attacked", under, log_kb),
            ):
                p50, p99 = percentile(p.latencies, 50) * 1000, percentile(p.latencies, 99) * 1000
                shown_kb = f"{kb:8.1f}" if kb is not None else f"{'':8s}"
                print(
                    f"  {label:34s} {p50:8.1f} {p99:8.1f} {p.failed:7d}"
                    f" {len(p.latencies) + p.failed:7d} {shown_kb}"
                )
            if runner is None:
                print(
                    f"    guard: {stats['evicted']} evicted, {stats['timed_out']} timed out,"
                    f" {stats['refused']} refused (503); attacker reconnects: {attack.opened}"
                )


# --- model names -------------------------------------------------------------------------------


def bench_names(args: argparse.Namespace) -> None:
    print(f"\nmodel names: {args.names} distinct names, one request each, through `deepconf serve`")
    flags = ["--budget", "1", "--window", "2"]
    with (
        Upstream(tokens=4) as up,
        serve(up.base_url, flags) as px,
        httpx.Client(base_url=px.root, timeout=60) as http,
    ):

        def ask(name: str) -> int:
            body = {"model": name, "messages": ASK}
            return http.post("/v1/chat/completions", json=body).status_code

        for i in range(50):  # warm-up: imports, pools and caches reach working size
            ask(f"warm-{i}")
        before = px.rss_mb()
        statuses = {ask(f"name-{i}") for i in range(args.names)}
        after = px.rss_mb()
        backends = px.health()["backends"]
    print(
        f"  statuses {sorted(statuses)}; serve RSS {before:.1f} -> {after:.1f} MB"
        f" ({after - before:+.1f} MB for {args.names} names); backends open at the end:"
        f" {backends}"
    )


# --- huge body ---------------------------------------------------------------------------------


def bench_body(args: argparse.Namespace) -> None:
    mb = args.body_mb
    print("\nhuge body: `deepconf serve-model` (bundled model), body limit 8 MB")
    with Served(["serve-model"]) as model, httpx.Client(base_url=model.root, timeout=600) as http:
        payload = b'{"prompt": "' + b"x" * (mb * 2**20) + b'"}'

        def streamed() -> Iterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(mb):
                yield b"y" * 2**20
            yield b'"}'

        cases = [
            (
                f"{mb} MB body, length declared",
                lambda: http.post("/v1/completions", content=payload),
            ),
            (
                f"{mb} MB body, streamed (chunked)",
                lambda: http.post("/v1/completions", content=streamed()),
            ),
            (
                "7 MB prompt (under the limit)",
                lambda: http.post("/v1/completions", json={"prompt": "z" * 7_000_000}),
            ),
        ]
        print(f"  {'request':36s} {'status':>6s} {'seconds':>8s} {'RSS growth MB':>14s}")
        for label, send in cases:
            before = model.rss_mb()
            started = time.perf_counter()
            status = send().status_code
            took = time.perf_counter() - started
            print(f"  {label:36s} {status:6d} {took:8.2f} {model.rss_mb() - before:14.1f}")
        health = httpx.get(model.root + "/health", timeout=10).status_code
        print(f"  /health afterwards: {health}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["slowloris", "names", "body"], default=None)
    ap.add_argument("--connections", type=int, default=1100, help="slowloris connections")
    ap.add_argument("--seconds", type=float, default=20.0, help="slowloris attack duration")
    ap.add_argument("--file-limit", type=int, default=1024, help="the server's ulimit -n")
    ap.add_argument(
        "--compare", type=int, choices=[0, 1], default=1, help="also attack the unguarded server"
    )
    ap.add_argument("--names", type=int, default=1000, help="distinct model names")
    ap.add_argument("--body-mb", type=int, default=50, help="size of the huge body")
    args = ap.parse_args(argv)
    if args.only in (None, "slowloris"):
        bench_slowloris(args)
    if args.only in (None, "names"):
        bench_names(args)
    if args.only in (None, "body"):
        bench_body(args)


if __name__ == "__main__":
    main()
