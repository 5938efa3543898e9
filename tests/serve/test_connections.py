"""`deepconf serve` under slow and greedy clients (deepconf/serve/connections.py), on real
sockets: a connection that never finishes its request head is closed at the deadline, one
that trickles its head byte by byte too; past the connection bound the longest-waiting
half-open connection makes room for a real client; when every connection is busy a new one
gets a 503 at once; accept errors are logged once per interval. Assertions count on the
protocol (the server's close, its status line) and the guard's counters, never on time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from support.proxy_runner import ProxyServer
from support.scripted_server import MODEL, Script, ScriptedServer

from deepconf.serve.connections import AcceptErrorFilter

ASK = [{"role": "user", "content": "What is 3+4?"}]
ANSWER = Script.from_text("The answer is \\boxed{7}.", delay=0.001)
SAFETY = 30.0  # seconds a socket read may block before the test gives up (never reached)


def _connect(proxy: ProxyServer) -> socket.socket:
    port = int(proxy.root.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=SAFETY)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes (EOF or reset): True; data instead: False."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@contextlib.contextmanager
def _sockets(n: int, proxy: ProxyServer) -> Iterator[list[socket.socket]]:
    socks = [_connect(proxy) for _ in range(n)]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_a_connection_that_sends_no_request_head_is_closed_at_the_deadline() -> None:
    """Connected, then silent (and: half a head): the server closes both at the header
    deadline, and counts them."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url, header_timeout=0.2) as px:
        with _sockets(2, px) as (silent, half):
            half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
            assert _closed_by_server(silent)
            assert _closed_by_server(half)
        assert px.guard.timed_out == 2
        assert httpx.get(px.root + "/health").status_code == 200  # others are served as ever


def test_trickling_a_head_does_not_extend_its_deadline() -> None:
    """A slowloris that sends one more header byte whenever it can is still closed: the
    deadline counts from the connection, not from the last byte."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url, header_timeout=0.3) as px:
        with _sockets(1, px) as (sock,):
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            closed = False
            for _ in range(10_000):  # each round: one byte, then up to 20 ms for the close
                try:
                    sock.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                readable, _, _ = select.select([sock], [], [], 0.02)
                if readable and _closed_by_server(sock):
                    closed = True
                    break
            assert closed
        assert px.guard.timed_out == 1


def test_past_the_bound_the_longest_waiting_half_open_connection_makes_room() -> None:
    """Bound 8, then 20 half-open connections: each one past the bound closes the oldest
    waiting one, so a real client still connects and is answered, and the oldest 13 (12, then
    one more for the client) were closed by the server."""
    with (
        ScriptedServer(default=ANSWER) as up,
        ProxyServer(up.base_url, max_connections=8, header_timeout=60) as px,
        _sockets(20, px) as half_open,
    ):
        r = httpx.get(px.root + "/health")
        assert r.status_code == 200
        stats = r.json()["connections"]
        assert stats["evicted"] == 13 and stats["open"] <= 8
        assert all(_closed_by_server(s) for s in half_open[:13])
        # the newest stay open: their heads, sent now, are answered
        half_open[-1].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert half_open[-1].recv(65536).startswith(b"HTTP/1.1 200")


def test_when_every_connection_is_busy_a_new_one_gets_a_503_at_once() -> None:
    """Bound 2, both connections inside slow requests: the third is refused with a 503 in
    OpenAI's error shape (not queued, not silently dropped)."""
    slow = Script.from_text(" ".join(["step"] * 200) + " \\boxed{7}", delay=0.02)
    choose = lambda n, body: slow if "seed" in body else None  # noqa: E731
    body = {"model": MODEL, "messages": ASK, "seed": 1, "stream": True, "deepconf": {"budget": 1}}
    with (
        ScriptedServer(default=ANSWER, choose=choose) as up,
        ProxyServer(up.base_url, max_connections=2) as px,
        httpx.Client(base_url=px.base_url, timeout=SAFETY) as first,
        httpx.Client(base_url=px.base_url, timeout=SAFETY) as second,
        first.stream("POST", "/chat/completions", json=body) as a,
        second.stream("POST", "/chat/completions", json={**body, "seed": 2}) as b,
    ):
        assert a.status_code == b.status_code == 200  # both heads are in: both connections busy
        r = httpx.get(px.root + "/health")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "too_many_connections"
        assert px.guard.refused == 1


async def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports each failed accept() (out of file descriptors) through the loop's
    exception handler with a traceback, up to a backlog's worth per tick: through the filter
    one line gets out per interval, without the traceback, and counts what it left out."""
    logger = logging.getLogger("asyncio")
    limiter = AcceptErrorFilter(interval=3600)
    installed, logger.filters = logger.filters, [limiter]  # the process-wide one steps aside
    loop = asyncio.get_running_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(2048):
                error = OSError(24, "Too many open files")
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
            loop.call_exception_handler({"message": "something else entirely"})
    finally:
        logger.filters = installed
    accept = [r for r in caplog.records if "accept()" in r.getMessage()]
    assert len(accept) == 1 and accept[0].exc_info is None
    assert "Too many open files" in accept[0].getMessage()
    assert limiter.dropped == 2047
    assert any("something else" in r.getMessage() for r in caplog.records)  # others pass


def test_serve_at_a_low_file_limit_keeps_answering_half_open_floods() -> None:
    """`deepconf serve` as a process at `ulimit -n 256`, flooded with 400 half-open
    connections: /health from a normal client is answered every time, accept() never runs
    out of descriptors, and the log stays small (before: 'Too many open files' with a
    traceback per failed accept, and the lock-out)."""
    import resource

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    runner = "from deepconf.cli import app; app()"
    with ScriptedServer(default=ANSWER) as up:
        args = ["serve", "--upstream", up.base_url, "--port", str(port), "--header-timeout", "60"]
        proc = subprocess.Popen(
            [sys.executable, "-P", "-c", runner, *args],
            stderr=subprocess.PIPE,
            preexec_fn=low_limit,
        )
        flood: list[socket.socket] = []
        try:
            base = f"http://127.0.0.1:{port}"
            assert _wait_for_health(proc, base)
            for _ in range(400):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=SAFETY))
            answers = [httpx.get(base + "/health", timeout=SAFETY) for _ in range(5)]
            stats = answers[-1].json()["connections"]
        finally:
            for sock in flood:
                sock.close()
            proc.terminate()
            _, err = proc.communicate(timeout=SAFETY)
    assert [a.status_code for a in answers] == [200] * 5
    assert stats["max"] == 128 and stats["evicted"] >= 400 - 128
    assert b"out of system resource" not in err  # accepts in batches kept descriptors free
    assert len(err) < 20_000, err[-2000:]


def _wait_for_health(proc: subprocess.Popen, base: str) -> bool:
    for _ in range(400):
        if proc.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/health", timeout=SAFETY).status_code == 200:
                return True
        time.sleep(0.05)  # start-up poll, not a measurement
    return False
