"""Who may hold a connection to `deepconf serve` (and `serve-model`): a bound on open
connections, a deadline for each request head, and accept errors logged once per interval.

Why: uvicorn alone waits forever for a request head and accepts until the process runs out of
file descriptors. Measured before this: 1,100 half-open connections (no key needed) at
`ulimit -n 1024` locked every client out for 60 s, and asyncio logged each failed accept()
with a traceback, up to a backlog's worth per tick: 346 MB of "Too many open files".

The rules (`ConnectionGuard`):
- the listening socket (`guard.listen`) accepts at most `accept_batch` connections per turn
  of the event loop: asyncio accepts up to its backlog (uvicorn: 2048) in one go, before
  any of them is seen by the protocol, which is how a burst used up every descriptor;
- a connection must send a complete request head within `header_timeout` seconds of opening,
  and again of its previous response (keep-alive); else it is closed;
- at most `max_connections` are open. A new one past the bound closes the connection that
  has waited longest for its head (a real client sends its head at once, so that is the slow
  one); when every connection is busy with a request, the new one gets a 503 and is closed
  at once. So a slowloris cannot hold the slots a normal client needs;
- should accept() still run out of descriptors, "socket.accept() out of system resource" (and
  the retry callbacks asyncio schedules, one per failed accept) is logged at most once per
  interval, with a count of those left out (`AcceptErrorFilter`).

The file descriptors (`ulimit -n`, say 1024) are budgeted: half for client connections, an
eighth for the upstream pool (`deepconf serve` sizes it so), and a few accept batches of
headroom while evicted connections close; 1024 -> 512 clients, 128 upstream, batches of 32.

What it does not do: TLS, per-client rate limits, or deadlines for bodies (the app bounds
body size and time); those belong to a reverse proxy in front (README, "Security").
It relies on uvicorn's h11 protocol (`uvicorn.protocols.http.h11_impl.H11Protocol`): a new
request's head is seen as a new `cycle`, a finished response as `on_response_complete`.
The loopback tests (tests/serve/test_connections.py) fail if that ever changes.

    guard = ConnectionGuard(max_connections=512, header_timeout=5.0)
    run_server(app, guard, host="127.0.0.1", port=8080)  # uvicorn over guard.listen(...)
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from collections import OrderedDict
from typing import Any

DEFAULT_HEADER_TIMEOUT = 5.0
BACKLOG = 2048  # connections the kernel queues before one is accepted (uvicorn's default)
ACCEPT_ERROR_INTERVAL = 10.0  # seconds between two logged accept() failures


def file_limit() -> int:
    """The process's soft limit on open file descriptors (`ulimit -n`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """Half the file-descriptor limit for clients (1024 -> 512); see the module docstring."""
    return max(16, file_limit() // 2)


def upstream_connections() -> int:
    """An eighth of the file-descriptor limit for the upstream pool (1024 -> 128)."""
    return max(8, file_limit() // 8)


def accept_batch() -> int:
    """Connections accepted per turn of the event loop (1024 -> 32)."""
    return max(8, file_limit() // 32)


class ConnectionGuard:
    """The rules of the module docstring, for one server. Counters: `evicted` (closed to
    make room), `timed_out` (no head in time), `refused` (503: all busy)."""

    def __init__(
        self,
        max_connections: int | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        self.max_connections = max_connections or default_max_connections()
        if self.max_connections < 1 or not header_timeout > 0:
            raise ValueError("max_connections must be >= 1 and header_timeout > 0")
        self.header_timeout = header_timeout
        self._open: set[Any] = set()
        # connections waiting for a request head, longest-waiting first, with their deadline
        self._waiting: OrderedDict[Any, asyncio.TimerHandle] = OrderedDict()
        self.evicted = self.timed_out = self.refused = 0
        install_accept_error_filter()

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self._open),
            "waiting_for_head": len(self._waiting),
            "max": self.max_connections,
            "evicted": self.evicted,
            "timed_out": self.timed_out,
            "refused": self.refused,
        }

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for uvicorn.Config that apply this guard to connections."""
        return {"http": guarded_h11_protocol(self)}

    def listen(self, host: str, port: int, reuse_port: bool = False) -> socket.socket:
        """A socket bound to host:port whose accept() takes `accept_batch()` per turn of the
        loop (the server calls listen() on it). `reuse_port`: SO_REUSEPORT, for the
        `serve --workers` parent and workers that share the port (deepconf/serve/workers.py)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = _BatchedAccept(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.batch = accept_batch()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        return sock

    def adopt(self, fd: int) -> socket.socket:
        """The listening socket a `serve --workers` parent bound and passed down as `fd`,
        accepting in batches as `listen`'s does."""
        sock = _BatchedAccept(fileno=fd)
        sock.batch = accept_batch()
        return sock

    # --- called by the protocol ----------------------------------------------------------------

    def admit(self, conn: Any) -> bool:
        """A connection was accepted: make room for it, or refuse it (False: closed)."""
        if len(self._open) >= self.max_connections:
            if self._waiting:
                self.evicted += 1
                self._close(next(iter(self._waiting)))
            else:
                self.refused += 1
                conn.transport.write(_busy_response(self.max_connections))
                conn.transport.close()
                return False
        self._open.add(conn)
        return True

    def await_head(self, conn: Any) -> None:
        """The connection now owes a request head, within header_timeout."""
        if conn not in self._open:
            return
        self._stop_waiting(conn)
        loop = asyncio.get_running_loop()
        self._waiting[conn] = loop.call_later(self.header_timeout, self._head_too_slow, conn)

    def head_received(self, conn: Any) -> None:
        self._stop_waiting(conn)

    def forget(self, conn: Any) -> None:
        """The connection is gone (closed by either side)."""
        self._stop_waiting(conn)
        self._open.discard(conn)

    # --- internals -----------------------------------------------------------------------------

    def _head_too_slow(self, conn: Any) -> None:
        self._waiting.pop(conn, None)
        self.timed_out += 1
        self._close(conn)

    def _close(self, conn: Any) -> None:
        # Forgotten now, not when connection_lost arrives: the slot is free for the caller.
        self.forget(conn)
        conn.transport.close()

    def _stop_waiting(self, conn: Any) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()


class _BatchedAccept(socket.socket):
    """A listening socket that stops each turn's accept() loop after `batch` connections:
    asyncio reads BlockingIOError as "queue empty" and comes back on the next turn, after
    the protocol has seen (and the guard bounded) the ones taken. The kernel's queue, not
    our descriptors, holds the rest meanwhile."""

    batch = 32
    _taken = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self._taken >= self.batch:
            raise BlockingIOError
        if self._taken == 0:
            asyncio.get_running_loop().call_soon(self._next_turn)
        conn = super().accept()
        self._taken += 1
        return conn

    def _next_turn(self) -> None:
        self._taken = 0


def run_server(
    app: Any,
    guard: ConnectionGuard,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    listen_fd: int | None = None,
    reuse_port: bool = False,
) -> None:
    """uvicorn serving `app` on host:port under `guard`, until interrupted; with
    `listen_fd`, on that inherited listening socket instead, and with `reuse_port` on its
    own socket beside the other workers' (a `serve --workers` worker either way)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, backlog=BACKLOG, **guard.uvicorn_options())
    if listen_fd is not None:
        sock = guard.adopt(listen_fd)
    else:
        sock = guard.listen(host, port, reuse_port=reuse_port)
        if not reuse_port:  # a worker's parent says where they listen
            logging.getLogger("uvicorn.error").info("listening on http://%s:%d", host, port)
    uvicorn.Server(config).run(sockets=[sock])


def _busy_response(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the server holds its maximum of {limit} connections, all busy"
                " with requests: retry shortly",
                "type": "server_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: 1\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def guarded_h11_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, reporting each connection's life to `guard`."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if guard.admit(self):
                guard.await_head(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.forget(self)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request head arrived and its cycle began
                guard.head_received(self)

        def on_response_complete(self) -> None:
            # Owed from now on; a pipelined head already buffered is handled inside super()
            # and clears it again.
            guard.await_head(self)
            super().on_response_complete()

    return GuardedH11Protocol


class AcceptErrorFilter(logging.Filter):
    """Passes one accept-failure record per `interval` seconds, without its traceback, noting
    how many were left out since the last one. Two kinds: the failure itself, and the retry
    asyncio schedules for each failed accept(), which fails in turn once the server closed."""

    PREFIX = "socket.accept() out of system resource"
    RETRY = "Exception in callback BaseSelectorEventLoop._start_serving"

    def __init__(self, interval: float = ACCEPT_ERROR_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self.dropped = 0  # since the last one passed
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.getMessage().split("\n", 1)[0]
        if not first.startswith((self.PREFIX, self.RETRY)):
            return True
        now = time.monotonic()
        if now < self._next:
            self.dropped += 1
            return False
        self._next = now + self.interval
        reason = record.exc_info[1] if record.exc_info else None
        record.msg = f"{first[:120]}: {reason!r}"
        if self.dropped:
            record.msg += f" ({self.dropped} more since the last report)"
        record.args, record.exc_info, record.exc_text = (), None, None
        self.dropped = 0
        return True


_ACCEPT_FILTER = AcceptErrorFilter()


def install_accept_error_filter() -> AcceptErrorFilter:
    """Attach the one AcceptErrorFilter to asyncio's logger (idempotent)."""
    logger = logging.getLogger("asyncio")
    if _ACCEPT_FILTER not in logger.filters:
        logger.addFilter(_ACCEPT_FILTER)
    return _ACCEPT_FILTER
