"""A lean HTTP/1.1 transport for httpx, for plain-http servers: `H1Transport`.

At one token per network read (a GPU server streams each trace's tokens one SSE event at a
time), httpx's own transport (httpcore over h11, a pure-Python state machine) cost ~35% of
the client's CPU per read. This transport speaks just the HTTP/1.1 the backend needs over an
`asyncio.Protocol`: it writes the request httpx built, reads the status line and headers,
and yields the body as it arrives (chunked, Content-Length, or to the close), one buffer
append and one future per read. A piece is everything that arrived since the last one (h11
gives one per HTTP chunk): a client that falls behind catches up in bigger, cheaper reads.
httpx still builds requests, decodes content encodings and owns the client API; errors are
httpx's exceptions (ConnectError, ConnectTimeout, ReadTimeout, ReadError,
RemoteProtocolError), so `HttpErrors` words them as before.

Connections are kept alive and reused (a stale idle one is retried once on a new
connection); a response closed before its end (a prune) closes its connection, which is
how the server learns to abort. At most `max_connections` are open at once; more requests
wait. https and anything else go to `fallback()` (httpx's own transport, made on first
use); with proxy environment variables set, httpx keeps every request (`default_transport`).
httpx's transport is the slow reference the tests compare it with.

An event stream's body can also push (`push_body(response).pump(sink)`): each piece goes to
`sink` from `data_received` as it arrives, so the reader's work runs where the bytes land,
with no task step per read (backends/response_reader.py); `read_body` is its reference.

    client = httpx.AsyncClient(transport=default_transport(limits))
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import httpx

from deepconf.backends import native

_framing = native.load("_framing")  # C where it was built; None: _whole_chunks (same bytes)

MAX_HEAD_BYTES = 64 * 1024  # status line + headers
PAUSE_ABOVE = 1 << 20  # buffered, unread body bytes at which the socket stops being read
PUSH_BODY = "deepconf.push_body"  # response extension: an event stream's body, for push_body()


def default_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """The transport the HTTP backend uses: `H1Transport`, or None (httpx's own, chosen by
    httpx) when proxies are configured in the environment: httpx mounts those only when no
    transport is given."""
    proxies = urllib.request.getproxies()
    if any(key in proxies for key in ("http", "all")):
        return None
    return H1Transport(lambda: httpx.AsyncHTTPTransport(limits=limits), limits.max_connections)


class H1Transport(httpx.AsyncBaseTransport):
    """See the module docstring."""

    def __init__(
        self, fallback: Callable[[], httpx.AsyncBaseTransport], max_connections: int | None
    ) -> None:
        # Made on first use: httpx's transport loads the CA store at once (~50 ms of CPU),
        # which a plain-http run never needs.
        self._make_fallback = fallback
        self._fallback: httpx.AsyncBaseTransport | None = None
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max = max_connections
        self._slots: asyncio.Semaphore | None = None
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = self._make_fallback()
            return await self._fallback.handle_async_request(request)
        if self._slots is None and self._max is not None:
            self._slots = asyncio.Semaphore(self._max)
        if self._slots is not None:
            await self._slots.acquire()
        conn: _Connection | None = None
        try:
            head = _request_head(request, await request.aread())
            timeouts = request.extensions.get("timeout", {})
            read_timeout = timeouts.get("read")
            key = (url.host, url.port or 80)
            while True:
                conn, reused = await self._connection(key, timeouts.get("connect"))
                conn.write(head)
                try:
                    status, reason, headers = await conn.read_head(read_timeout)
                except _StaleConnection:
                    self._forget(conn)
                    if reused:
                        continue  # the server closed it while idle: once more, anew
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    ) from None
                break
            no_body = request.method == "HEAD" or status in (204, 304)
            conn.start_body(headers, no_body)
        except BaseException:
            if conn is not None:
                self._forget(conn)
            if self._slots is not None:
                self._slots.release()
            raise
        # An event stream's reads are guarded by the backend's own progress deadline
        # (backends/watchdog.py); any other body gets httpx's read timeout per wait.
        values = dict((name.lower(), value) for name, value in headers)
        is_stream = values.get(b"content-type", b"").startswith(b"text/event-stream")
        body = _Body(self, key, conn, None if is_stream else read_timeout)
        extensions = {"http_version": conn.http_version, "reason_phrase": reason}
        if is_stream:
            extensions[PUSH_BODY] = body
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)

    async def _connection(
        self, key: tuple[str, int], timeout: float | None
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), key[0], key[1])
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        self._open.add(conn)
        return conn, False

    def _done(self, key: tuple[str, int], conn: _Connection, reuse: bool) -> None:
        if reuse and conn.usable():
            self._idle.setdefault(key, []).append(conn)
        else:
            self._forget(conn)
        if self._slots is not None:
            self._slots.release()

    def _forget(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    """The request as sent: its line, headers and whole body. The body was read whole, so
    it goes with its length: a streamed request's "Transfer-Encoding: chunked" would promise
    a chunk framing this transport does not write."""
    target = request.url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    chunked = "transfer-encoding" in request.headers
    lines += [
        name + b": " + value
        for name, value in request.headers.raw
        if name.lower() != b"transfer-encoding"
    ]
    if (body or chunked) and "content-length" not in request.headers:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _StaleConnection(Exception):
    """The connection closed before any byte of the response."""


# Bytes one read may take. A client behind its servers finds more than this waiting in
# every socket it reads, and each read costs the same Python steps however much it holds: 1
# MiB reads spent 13.5% less CPU than asyncio's own 256 KiB in a one-worker eval of
# 2,048,000 tokens (32 in flight, medians of 5, alternating: 9.27 against 10.72 CPU-s, each
# pair the same way); 512 KiB, 2 and 4 MiB were no better than 1.
READ_SIZE = 1 << 20
_read_areas = threading.local()  # each thread's one reusable read area


def _read_area() -> memoryview:
    """This thread's read area: every connection's socket is read into it and its bytes
    copied out at once (`buffer_updated`), so no read allocates. A plain Protocol got a
    new bytes object per read, which glibc's malloc handed back to the kernel and took
    again (deepconf/entry.py `keep_freed_memory` is the rest of that story)."""
    area = getattr(_read_areas, "area", None)
    if area is None:
        area = _read_areas.area = memoryview(bytearray(READ_SIZE))
    return area


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: a receive buffer, a waiter, and the body's framing."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._area = memoryview(b"")  # what get_buffer last handed out
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.eof = False
        self.error: BaseException | None = None  # what ended the connection, if anything
        self.keep_alive = True
        self.http_version = b"HTTP/1.1"  # of the last response head read
        # Body framing: chunked, Content-Length (remaining) or to the close (-1).
        self._chunked = False
        self._remaining = -1
        self._need_crlf = False
        self._trailer = False
        self.body_done = False
        # Push mode (`pump`): body pieces go to the sink as they arrive, and the pump's
        # future settles when the body ends, the sink says stop, or the connection breaks.
        self._sink: Callable[[bytes], bool] | None = None
        self._pumped: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        self._area = _read_area()
        return self._area

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._area[:nbytes])  # copied into the receive buffer there

    def data_received(self, data: bytes | memoryview) -> None:
        self._buf += data
        if (
            self._sink is None
            and len(self._buf) > PAUSE_ABOVE
            and not self._paused
            and self._transport is not None
        ):
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._sink is not None:
            self._push()  # push mode: the bytes are handled here and now
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading ------------------------------------------------------------------------------

    async def _wait(self, timeout: float | None = None) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        if timeout is None:
            await waiter
            return
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the server") from None

    def usable(self) -> bool:
        return not self.eof and self._transport is not None and not self._transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # asyncio closes the socket on the loop's next turn; the shutdown tells the
            # server now, even if the caller blocks the loop right after (it aborts sooner).
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            transport.close()

    async def read_head(
        self, timeout: float | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """(status, reason, headers) of the next final response; 1xx ones are skipped."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            while end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("the response headers are too long")
                if self.eof:
                    if self._buf:
                        raise self._broken("the server closed the connection mid-headers")
                    raise _StaleConnection
                await self._wait(timeout)
                end = self._buf.find(b"\r\n\r\n")
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            status_line, *header_lines = head.split(b"\r\n")
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {status_line!r}")
            status = int(parts[1])
            headers = []
            for line in header_lines:
                name, colon, value = line.partition(b":")
                if not colon or not name or name != name.strip():
                    raise httpx.RemoteProtocolError(f"malformed header line: {line[:100]!r}")
                headers.append((name, value.strip()))
            if 100 <= status < 200:
                continue
            self.http_version = parts[0]
            if parts[0] == b"HTTP/1.0":
                self.keep_alive = False
            return status, parts[2] if len(parts) > 2 else b"", headers

    def start_body(self, headers: list[tuple[bytes, bytes]], no_body: bool) -> None:
        values = {name.lower(): value for name, value in headers}
        if b"close" in values.get(b"connection", b"").lower():
            self.keep_alive = False
        self._chunked, self._remaining, self._need_crlf, self._trailer = False, -1, False, False
        self.body_done = no_body
        if no_body:
            return
        if b"chunked" in values.get(b"transfer-encoding", b"").lower():
            self._chunked = True
            self._remaining = 0
        elif (length := values.get(b"content-length")) is not None:
            if not length.strip().isdigit():
                raise httpx.RemoteProtocolError(f"bad Content-Length {length!r}")
            self._remaining = int(length)
            self.body_done = self._remaining == 0
        else:
            self.keep_alive = False  # the body runs to the close

    async def read_body(self, timeout: float | None = None) -> bytes:
        """The next body bytes (b"" once the body ended); ReadTimeout after `timeout`
        seconds of waiting for bytes that do not come."""
        while (data := self._next_piece()) is None:
            await self._wait(timeout)
        return data

    async def pump(self, sink: Callable[[bytes], bool]) -> None:
        """Push mode: `sink(piece)` gets every piece of the body (what `read_body` would
        return) as its bytes arrive, called from `data_received`, so a read costs no task
        step; returns when the body ended or the sink returned True, and raises what
        `read_body` would (or what the sink raised). Cancelling it stops the pushing."""
        self._pumped = self._loop.create_future()
        self._sink = sink
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        try:
            self._push()  # what arrived with the head
            await self._pumped
        finally:
            self._sink = self._pumped = None

    def _push(self) -> None:
        pumped, sink = self._pumped, self._sink
        assert pumped is not None and sink is not None
        try:
            while (data := self._next_piece()) is not None:
                if not data or sink(data):
                    break  # the body ended, or the sink has what it wanted
            else:
                return  # the rest has not arrived yet
        except Exception as exc:
            self._sink = None
            if not pumped.done():
                pumped.set_exception(exc)
            return
        self._sink = None  # settled: later bytes stay in the buffer
        if not pumped.done():
            pumped.set_result(None)

    def _next_piece(self) -> bytes | None:
        """The body bytes that arrived (b"" once the body ended), or None: none yet."""
        if not self._buf and not self.eof:
            return b"" if self.body_done else None  # the common "nothing more" of a read
        data = self._take_chunked() if self._chunked else self._take_plain()
        if data or self.body_done:
            return data
        if self.eof:
            if self._remaining < 0 and not self._chunked:
                self.body_done = True  # read to the close: the close is the end
                return b""
            raise self._broken(
                "peer closed connection without sending complete message body"
                + (" (incomplete chunked read)" if self._chunked else "")
            )
        return None

    def _take_plain(self) -> bytes:
        buf = self._buf
        if not buf:
            return b""
        if self._remaining < 0:  # to the close
            data = bytes(buf)
            buf.clear()
            return data
        data = bytes(buf[: self._remaining])
        del buf[: len(data)]
        self._remaining -= len(data)
        self.body_done = self._remaining == 0
        return data

    def _take_chunked(self) -> bytes:
        buf, pos = self._buf, 0
        out: list[bytes | bytearray] = []
        while not self.body_done:
            if not (self._remaining or self._need_crlf or self._trailer):
                pos = _take_whole_chunks(buf, pos, out)  # the common case, then a general step
            if self._remaining:
                piece = bytes(buf[pos : pos + self._remaining])
                if not piece:
                    break
                out.append(piece)
                pos += len(piece)
                self._remaining -= len(piece)
                self._need_crlf = self._remaining == 0
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > 4096:
                    raise httpx.RemoteProtocolError("a chunk-size line past 4096 bytes")
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if self._need_crlf:
                if line:
                    raise httpx.RemoteProtocolError("chunk data longer than its size")
                self._need_crlf = False
            elif self._trailer:
                self.body_done = not line  # trailer fields end with an empty line
            else:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size < 0:
                    raise httpx.RemoteProtocolError(f"bad chunk size line {line[:40]!r}")
                self._remaining = size
                self._trailer = size == 0
        del buf[:pos]
        return b"".join(out)

    def _broken(self, what: str) -> httpx.TransportError:
        if self.error is not None:
            exc = httpx.ReadError(str(self.error) or type(self.error).__name__)
            exc.__cause__ = self.error
            return exc
        return httpx.RemoteProtocolError(what)


def _take_whole_chunks(buf: bytearray, pos: int, out: list[bytes | bytearray]) -> int:
    """`_whole_chunks` in C where it was built: one bytes for all the chunks' data."""
    if _framing is None:
        return _whole_chunks(buf, pos, out)
    pos, data = _framing.whole_chunks(buf, pos)
    if data:
        out.append(data)
    return pos


def _whole_chunks(buf: bytearray, pos: int, out: list[bytes | bytearray]) -> int:
    """Take whole chunks back to back ("SIZE\\r\\nDATA\\r\\n", a server's event each) from
    `pos`, five steps a chunk; return where they end. Anything else (an extension, the last
    chunk, a chunk cut by the read) is left to `_take_chunked`'s general steps."""
    n = len(buf)
    while True:
        end = buf.find(b"\r\n", pos, pos + 18)
        if end <= pos:
            return pos
        try:
            size = int(buf[pos:end], 16)
        except ValueError:
            return pos
        start = end + 2
        stop = start + size
        if size <= 0 or stop + 2 > n or buf[stop : stop + 2] != b"\r\n":
            return pos
        out.append(buf[start:stop])
        pos = stop + 2


def push_body(response: httpx.Response) -> PushBody | None:
    """The body of an event stream this transport read, which can push its pieces as they
    arrive (`PushBody.pump`); None for any other response (httpx's transport, a content
    encoding to undo): read those with `aiter_bytes()`."""
    body = response.extensions.get(PUSH_BODY)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return body if encoding in ("", "identity") else None


class PushBody(Protocol):
    async def pump(self, sink: Callable[[bytes], bool]) -> None:
        """See `_Connection.pump`."""
        ...


class _Body(httpx.AsyncByteStream):
    """A response body; closing it early closes the connection (the server aborts)."""

    def __init__(
        self,
        transport: H1Transport,
        key: tuple[str, int],
        conn: _Connection,
        timeout: float | None,
    ) -> None:
        self._transport, self._key, self._conn = transport, key, conn
        self._timeout = timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn, timeout = self._conn, self._timeout
        while True:
            data = await conn.read_body(timeout)
            if not data:
                return
            yield data

    async def pump(self, sink: Callable[[bytes], bool]) -> None:
        await self._conn.pump(sink)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        self._transport._done(self._key, conn, conn.body_done and conn.keep_alive)
