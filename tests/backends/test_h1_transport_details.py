"""The lean HTTP/1.1 transport's (backends/h1_transport.py) behaviour beyond what httpx's own
transport is compared with in test_h1_transport.py: the connection cap, a stale idle
connection retried once, bodies a request or status rules out, read timeouts (none for an
event stream: the backend's watchdog guards those), the words of every framing error, read
back-pressure, https to the fallback, and a prune that tells the server at once.

Pinned by mutation testing (.ci/mutation): each test failed on mutants of the module that
the comparison tests let through.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fake_socket import FakeSocketTransport
from support.loopback_tcp import LoopbackServer

from deepconf.backends.h1_transport import (
    MAX_HEAD_BYTES,
    PAUSE_ABOVE,
    READ_SIZE,
    H1Transport,
    _Connection,
    default_transport,
)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello"
CLOSE = None  # a reply that closes the connection without answering


def no_fallback() -> httpx.AsyncBaseTransport:
    raise AssertionError("a plain-http request went to httpx's transport, not the lean one")


class SequenceServer(LoopbackServer):
    """Loopback HTTP/1.1: the n-th request (over all connections) gets `replies(n)`: bytes
    written at once, CLOSE, or (bytes, then stall) as `(head_and_some, None)` that never
    ends. Counts connections and the most open at once."""

    def __init__(self, replies: Callable[[int], object]) -> None:
        super().__init__()
        self.replies = replies
        self.requests = self.connections = self.open = self.most_open = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                reply = self.replies(self.requests)
                self.requests += 1
                if reply is CLOSE:
                    break
                if isinstance(reply, tuple):  # some bytes, then nothing more, ever
                    writer.write(reply[0])
                    await writer.drain()
                    await asyncio.Event().wait()
                writer.write(reply)  # type: ignore[arg-type]
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()


def lean(max_connections: int | None = 8) -> H1Transport:
    return H1Transport(no_fallback, max_connections)


# --- connections ---------------------------------------------------------------------------------


async def test_at_most_max_connections_are_open_and_the_rest_wait_their_turn() -> None:
    server = SequenceServer(lambda n: OK)
    async with server as url, httpx.AsyncClient(transport=lean(1)) as client:
        replies = await asyncio.gather(*(client.get(url + "/x") for _ in range(4)))
    assert [r.content for r in replies] == [b"hello"] * 4
    assert (server.connections, server.most_open) == (1, 1)


async def test_without_a_cap_concurrent_requests_each_open_a_connection() -> None:
    server = SequenceServer(lambda n: OK)
    async with server as url, httpx.AsyncClient(transport=lean(None)) as client:
        await asyncio.gather(*(client.get(url + "/x") for _ in range(3)))
    assert server.connections == 3


async def test_an_idle_connection_the_server_closed_is_retried_once_anew() -> None:
    """The server answers the first request of each connection and closes at the second
    (an idle timeout racing the request): the request is sent again on a new connection."""
    server = SequenceServer(lambda n: CLOSE if n == 1 else OK)
    async with server as url, httpx.AsyncClient(transport=lean()) as client:
        assert (await client.get(url + "/x")).content == b"hello"
        assert (await client.get(url + "/x")).content == b"hello"
    assert (server.requests, server.connections) == (3, 2)


async def test_a_new_connection_closed_without_an_answer_is_a_protocol_error() -> None:
    server = SequenceServer(lambda n: CLOSE)
    async with server as url, httpx.AsyncClient(transport=lean()) as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.get(url + "/x")
    assert str(info.value) == "Server disconnected without sending a response."
    assert server.requests == 1  # not retried: a new connection is not stale


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["http-1.0", "connection-close"],
)
async def test_a_response_that_says_close_is_not_reused(first: bytes) -> None:
    server = SequenceServer(lambda n: first if n == 0 else OK)
    async with server as url, httpx.AsyncClient(transport=lean()) as client:
        assert (await client.get(url + "/x")).content == b"ok"
        assert (await client.get(url + "/x")).content == b"hello"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("method", "first"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
    ],
)
async def test_a_response_without_a_body_ends_at_its_head_and_keeps_the_connection(
    method: str, first: bytes
) -> None:
    """HEAD, 204 and 304 carry no body whatever their headers say: the response ends at its
    head (it does not wait for the 5 bytes or the close), and the connection is reused."""
    server = SequenceServer(lambda n: first if n == 0 else OK)
    async with server as url, httpx.AsyncClient(transport=lean()) as client:
        async with asyncio.timeout(10):  # a transport waiting for a body would hang here
            response = await client.request(method, url + "/x")
            assert (response.status_code, response.content) == (int(first[9:12]), b"")
            assert (await client.get(url + "/x")).content == b"hello"
    assert server.connections == 1


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", OK[:-3]], ids=["no-head", "part-of-the-body"])
async def test_a_server_that_stops_sending_is_a_read_timeout(sent: bytes) -> None:
    """No head at all, or a body cut short with the connection left open."""
    server = SequenceServer(lambda n: (sent, None))
    async with (
        server as url,
        httpx.AsyncClient(transport=lean(), timeout=httpx.Timeout(5, read=0.1)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            async with asyncio.timeout(10):  # without a read timeout: a hang, failed here
                await client.get(url + "/x")


async def test_an_event_stream_has_no_read_timeout_of_its_own() -> None:
    """An event stream's reads are the backend watchdog's to bound (it knows what progress
    is): the transport waits past httpx's read timeout for the next event."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 20\r\n\r\n"
    gate = asyncio.Event()

    async def late_rest() -> None:
        await asyncio.sleep(0.3)  # three read timeouts
        gate.set()

    class Late(SequenceServer):
        async def _serve(self, reader, writer):  # type: ignore[no-untyped-def]
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + b"data: one\n\n")
            await gate.wait()
            writer.write(b"data: 2\n\n")
            await writer.drain()
            writer.close()

    async with Late(lambda n: None) as url:
        timeout = httpx.Timeout(5, read=0.1)
        async with httpx.AsyncClient(transport=lean(), timeout=timeout) as client:
            waiter = asyncio.create_task(late_rest())
            response = await client.get(url + "/x")
            await waiter
    assert response.content == b"data: one\n\ndata: 2\n\n"


# --- what a broken reply is called ---------------------------------------------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * MAX_HEAD_BYTES, "the response headers are too long"),
        (b"HTTP/1.1 200 OK\r\ncontent-le", "the server closed the connection mid-headers"),
        (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.1 status line: b'HTTP/2 200 OK'"),
        (b"HTTP/1.1 OK 200\r\n\r\n", "not an HTTP/1.1 status line: b'HTTP/1.1 OK 200'"),
        (b"HTTP/1.1\r\n\r\n", "not an HTTP/1.1 status line: b'HTTP/1.1'"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header line: b'no colon'"),
        (b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n", "malformed header line: b': no name'"),
        (b"HTTP/1.1 200 OK\r\n x: y\r\n\r\n", "malformed header line: b' x: y'"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5a\r\n\r\n", "bad Content-Length b'5a'"),
        (CHUNKED_HEAD + b"1" * 5000, "a chunk-size line past 4096 bytes"),
        (CHUNKED_HEAD + b"3\r\nabcd\r\n0\r\n\r\n", "chunk data longer than its size"),
        (CHUNKED_HEAD + b"zz\r\n", "bad chunk size line b'zz'"),
        (CHUNKED_HEAD + b"-5\r\n", "bad chunk size line b'-5'"),
        (
            CHUNKED_HEAD + b"5\r\nhel",
            "peer closed connection without sending complete message body (incomplete"
            " chunked read)",
        ),
        (OK[:-2], "peer closed connection without sending complete message body"),
    ],
)
async def test_a_broken_reply_is_a_protocol_error_that_says_what_broke(
    reply: bytes, said: str
) -> None:
    """The reply, then the close: each framing fault is httpx's RemoteProtocolError, in
    words that name the fault (`deepconf doctor` and stream errors quote them)."""

    class Closing(SequenceServer):
        async def _serve(self, reader, writer):  # type: ignore[no-untyped-def]
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()

    async with Closing(lambda n: None) as url, httpx.AsyncClient(transport=lean()) as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.get(url + "/x")
    assert str(info.value) == said


# --- reading -------------------------------------------------------------------------------------


async def test_reading_pauses_above_a_mebibyte_unread_and_resumes_when_read() -> None:
    """A reader that falls behind holds at most ~1 MiB per connection: the socket stops
    being read past PAUSE_ABOVE unread bytes, once, and reading resumes when the reader
    next waits for more."""
    conn = _Connection(asyncio.get_running_loop())
    sock = FakeSocketTransport()
    conn.connection_made(sock)  # type: ignore[arg-type]
    conn.start_body([(b"content-length", b"%d" % (3 * PAUSE_ABOVE))], no_body=False)
    conn.data_received(b"x" * PAUSE_ABOVE)
    assert sock.calls == []  # at the limit, not above it
    conn.data_received(b"x")
    conn.data_received(b"x")
    assert sock.calls == ["pause"]
    assert len(await conn.read_body()) == PAUSE_ABOVE + 2
    reader = asyncio.create_task(conn.read_body())
    await asyncio.sleep(0)  # the reader waits for more: reading resumes
    assert sock.calls == ["pause", "resume"]
    conn.data_received(b"y")
    assert await reader == b"y"
    assert not conn.body_done


async def test_every_connection_reads_into_one_area_and_keeps_a_copy() -> None:
    """The read area (get_buffer) is one per thread, shared by every connection, so no read
    allocates; what a read put there is copied out at once (buffer_updated): the next read,
    into the same area for another connection, changes neither's body."""
    loop = asyncio.get_running_loop()
    first, second = _Connection(loop), _Connection(loop)
    bodies = []
    for conn, data in ((first, b"first read"), (second, b"SECOND")):
        conn.connection_made(FakeSocketTransport())  # type: ignore[arg-type]
        conn.start_body([(b"content-length", b"%d" % len(data))], no_body=False)
        area = conn.get_buffer(-1)
        assert len(area) == READ_SIZE
        area[: len(data)] = data  # what the socket's recv_into does
        conn.buffer_updated(len(data))
        bodies.append(area)
    assert bodies[0] is bodies[1]  # one area
    assert await first.read_body() == b"first read"
    assert await second.read_body() == b"SECOND"


async def test_https_goes_to_the_fallback_made_once_and_closed_with_the_transport() -> None:
    made: list[Fallback] = []

    class Fallback(httpx.AsyncBaseTransport):
        closed = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=request.url.host.encode())

        async def aclose(self) -> None:
            self.closed = True

    def make() -> Fallback:
        made.append(Fallback())
        return made[-1]

    async with httpx.AsyncClient(transport=H1Transport(make, 8)) as client:
        for host in ("a.invalid", "b.invalid"):
            assert (await client.get(f"https://{host}/x")).content == host.encode()
    assert len(made) == 1 and made[0].closed


async def test_a_prune_tells_the_server_before_the_loop_turns() -> None:
    """Closing a response before its end shuts the socket down at once: the server sees
    the end even while the client's loop is blocked right after (asyncio itself would close
    the socket only on the loop's next turn)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    saw_end = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
            )
            while conn.recv(65536):
                pass
            saw_end.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        async with httpx.AsyncClient(transport=lean()) as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/x") as response:
                assert await anext(response.aiter_bytes()) == b"first"
            # The loop is blocked here (threading.Event.wait): only a shutdown already made
            # can have reached the server.
            assert saw_end.wait(timeout=10)
    finally:
        listener.close()
        thread.join(timeout=10)


# --- what goes out -------------------------------------------------------------------------------


class EchoServer(SequenceServer):
    """Answers each request with its own head and body, read by Content-Length."""

    def __init__(self) -> None:
        super().__init__(lambda n: None)
        self.heads: list[bytes] = []

    async def _serve(self, reader, writer):  # type: ignore[no-untyped-def]
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        lengths = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        body = await reader.readexactly(lengths[0]) if lengths else b""
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_request_body_goes_out_whole_with_its_length(streamed: bool) -> None:
    """A body given whole, or as a stream (which httpx would send chunked): the server gets
    the same bytes, framed by a Content-Length, never by a Transfer-Encoding this transport
    would not write."""
    parts = [b'{"a": ', b"1}"]

    async def stream():  # type: ignore[no-untyped-def]
        for part in parts:
            yield part

    server = EchoServer()
    async with server as url, httpx.AsyncClient(transport=lean()) as client:
        content = stream() if streamed else b"".join(parts)
        response = await client.post(url + "/x", content=content)
    assert response.content == b'{"a": 1}'
    head = server.heads[0].lower()
    assert b"content-length: 8\r\n" in head and b"transfer-encoding" not in head


async def test_a_reset_connection_is_a_read_error_that_keeps_its_cause() -> None:
    """A server that resets the connection mid-body (RST, not a clean close), after the
    client read the body's first bytes: httpx's ReadError, saying what the socket said, with
    the OSError as its cause."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    read_some = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhel")
        read_some.wait(timeout=10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with a zero linger: RST

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/x"
        async with (
            httpx.AsyncClient(transport=lean()) as client,
            client.stream("GET", url) as response,
        ):
            body = response.aiter_bytes()
            assert await anext(body) == b"hel"
            read_some.set()
            with pytest.raises(httpx.ReadError) as info:
                await anext(body)
    finally:
        read_some.set()
        listener.close()
        thread.join(timeout=10)
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert str(info.value) == str(info.value.__cause__)


# --- chunked framing, whatever the data ---------------------------------------------------------


@st.composite
def chunked_bodies(draw):  # type: ignore[no-untyped-def]
    """Chunks whose data looks like chunk framing (hex digits, CRLFs, ';'), some with two
    extensions, then the last chunk; the points where the reads cut the body."""
    alphabet = st.sampled_from([b"0", b"1", b"5", b"a", b"\r\n", b";", b"x", b" "])
    datas = draw(st.lists(st.lists(alphabet, min_size=1, max_size=8).map(b"".join), max_size=6))
    body = b""
    for data in datas:
        ext = draw(st.sampled_from([b"", b";a=1", b";a=1;b=2"]))
        body += b"%x%s\r\n%s\r\n" % (len(data), ext, data)
    body += b"0\r\n\r\n"
    return datas, body, draw(st.lists(st.integers(1, len(body) - 1), max_size=8))


@settings(max_examples=300, deadline=None)
@given(chunked_bodies())
def test_chunk_data_that_looks_like_framing_is_still_data(case) -> None:  # type: ignore[no-untyped-def]
    """Data bytes are data even when they spell a chunk header, wherever a read cuts them:
    the fast loop for whole chunks starts only at a chunk's boundary."""
    datas, body, cuts = case
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop)
        conn.start_body([(b"transfer-encoding", b"chunked")], no_body=False)
        got, last = [], 0
        for cut in [*sorted(set(cuts)), len(body)]:
            conn.data_received(body[last:cut])
            last = cut
            got.append(conn._take_chunked())
    finally:
        loop.close()
    assert b"".join(got) == b"".join(datas) and conn.body_done


# --- the transport the backend gets -------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY", "all_proxy"])
def test_any_proxy_for_http_keeps_httpx_transport(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "http://proxy.invalid:3128")
    assert default_transport(httpx.Limits(max_connections=1)) is None


async def test_the_default_transport_caps_connections_at_the_limits() -> None:
    server = SequenceServer(lambda n: OK)
    transport = default_transport(httpx.Limits(max_connections=1))
    assert transport is not None
    async with server as url, httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(client.get(url + "/x") for _ in range(3)))
    assert server.connections == 1


async def test_a_pruned_connection_is_forgotten() -> None:
    """Each prune closes its connection; the transport keeps no closed ones (at fleet scale,
    a prune per trace)."""
    body = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100\r\n\r\nfirst"
    server = SequenceServer(lambda n: (body, None))
    transport = lean()
    async with server as url, httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            async with client.stream("GET", url + "/x") as response:
                assert await anext(response.aiter_bytes()) == b"first"
        assert len(transport._open) == 0 and server.connections == 3
