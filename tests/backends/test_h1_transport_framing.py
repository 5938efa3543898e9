"""The lean HTTP/1.1 transport (backends/h1_transport.py) byte by byte: the request head it
writes, the fast loop for whole chunks beside the general chunked steps, Content-Length
bodies, status and header lines at their limits, a connection's buffering while nobody
reads, and the words of its timeouts and connection errors; then the transport's own
bookkeeping (the host it dials, a slot given back by a failed request and by a body closed
twice, the fallback it would make).

Pinned by mutation testing (.ci/mutation): each test failed on mutants of the module that
the loopback comparisons (test_h1_transport.py, test_h1_transport_details.py) let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from support.dead_ports import full_accept_queue
from support.fake_socket import FakeSocketTransport
from support.loopback_tcp import LoopbackServer

from deepconf.backends.h1_transport import (
    MAX_HEAD_BYTES,
    PAUSE_ABOVE,
    H1Transport,
    _Connection,
    _request_head,
    _whole_chunks,
    default_transport,
)


def no_fallback() -> httpx.AsyncBaseTransport:
    raise AssertionError("a plain-http request went to httpx's transport, not the lean one")


def connection(head: list[tuple[bytes, bytes]] | None = None) -> _Connection:
    """A connection on the running loop; with `head`, its body framed by those headers."""
    conn = _Connection(asyncio.get_running_loop())
    conn.connection_made(FakeSocketTransport())  # type: ignore[arg-type]
    if head is not None:
        conn.start_body(head, no_body=False)
    return conn


CHUNKED = [(b"transfer-encoding", b"chunked")]


# --- the request head ----------------------------------------------------------------------------


def test_a_request_without_a_body_has_no_length() -> None:
    request = httpx.Request("GET", "http://h:5/x?q=1")
    assert _request_head(request, b"") == b"GET /x?q=1 HTTP/1.1\r\nHost: h:5\r\n\r\n"


def test_a_body_keeps_the_one_length_httpx_gave_it() -> None:
    request = httpx.Request("POST", "http://h/x", content=b"abc")
    assert _request_head(request, b"abc") == (
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    )


@pytest.mark.parametrize("body", [b"", b"abc"], ids=["empty", "three-bytes"])
def test_a_streamed_body_goes_with_its_length_in_place_of_chunked(body: bytes) -> None:
    """httpx marks a streamed body chunked; read whole, it is sent with its length, an
    empty one too (a request with neither header has no body at all, by the RFC)."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    request = httpx.Request("POST", "http://h/x", content=stream())
    assert _request_head(request, body) == (
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


# --- the fast loop for whole chunks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "pos", "taken", "end"),
    [
        (b"5\r\nhello\r\n1\r\nx\r\n", 0, [b"hello", b"x"], 16),  # to the buffer's very end
        (b"JUNK5\r\nhello\r\na\r\n0123456789\r\n", 4, [b"hello", b"0123456789"], 29),
        (b"5\r\nhello\r\n5\r\nhel", 0, [b"hello"], 10),  # a chunk cut by the read
        (b"5\r\nhelloXX", 0, [], 0),  # data longer than its size: the general step says so
        (b"5;ext=1\r\nhello\r\n", 0, [], 0),  # an extension
        (b"0\r\n\r\n", 0, [], 0),  # the last chunk
        (b"\r\n5\r\nhello\r\n", 0, [], 0),  # no size
    ],
    ids=["two", "from-pos", "cut", "long-data", "extension", "last", "no-size"],
)
def test_whole_chunks_takes_every_whole_chunk_and_stops_at_anything_else(
    buf: bytes, pos: int, taken: list[bytes], end: int
) -> None:
    out: list[bytes | bytearray] = []
    assert _whole_chunks(bytearray(buf), pos, out) == end
    assert [bytes(piece) for piece in out] == taken


def test_a_chunk_size_is_hex_even_when_it_reads_as_decimal() -> None:
    """0x10 bytes whose 11th and 12th are a CRLF: read as decimal 10 the chunk would end
    there, and the rest of its data would be taken for the next size line."""
    data = b"0123456789\r\n3456"
    out: list[bytes | bytearray] = []
    buf = bytearray(b"10\r\n" + data + b"\r\n")
    assert _whole_chunks(buf, 0, out) == len(buf)
    assert out == [data]


# --- the general chunked steps -------------------------------------------------------------------


async def test_a_size_line_may_wait_up_to_4096_bytes_for_its_end() -> None:
    conn = connection(CHUNKED)
    conn.data_received(b"0" * 4096)
    assert conn._take_chunked() == b""  # at the limit: wait for the rest of the line
    conn.data_received(b"5\r\nhello\r\n0\r\n\r\n")
    assert conn._take_chunked() == b"hello" and conn.body_done
    conn = connection(CHUNKED)
    conn.data_received(b"0" * 4097)
    with pytest.raises(httpx.RemoteProtocolError, match="a chunk-size line past 4096 bytes"):
        conn._take_chunked()


def test_trailer_lines_are_never_body_even_when_they_spell_a_chunk() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop)
        conn.start_body(CHUNKED, no_body=False)
        conn.data_received(b"2\r\nok\r\n0\r\n5\r\nhello\r\n\r\n")
        assert conn._take_chunked() == b"ok" and conn.body_done
    finally:
        loop.close()


@pytest.mark.parametrize("line", [b"z" * 60, b"-" + b"5" * 59], ids=["not-hex", "negative"])
async def test_a_bad_size_line_is_quoted_to_40_bytes(line: bytes) -> None:
    conn = connection(CHUNKED)
    conn.data_received(line + b"\r\n")
    with pytest.raises(httpx.RemoteProtocolError) as info:
        conn._take_chunked()
    assert str(info.value) == f"bad chunk size line {line[:40]!r}"


# --- Content-Length bodies -----------------------------------------------------------------------


async def test_a_body_ends_at_its_length_whatever_follows() -> None:
    """Bytes past Content-Length (a misbehaving server) are never body."""
    conn = connection([(b"content-length", b"5")])
    conn.data_received(b"helloEXTRA")
    assert await conn.read_body() == b"hello"
    assert await conn.read_body() == b""
    assert conn.body_done


@pytest.mark.parametrize(("length", "done"), [(b"0", True), (b"1", False), (b"2", False)])
async def test_a_body_is_done_at_once_only_when_its_length_is_zero(
    length: bytes, done: bool
) -> None:
    """A Content-Length: 0 body on a connection the server keeps open ends without a read
    (waiting for one would hang until the server closes)."""
    conn = connection([(b"content-length", length)])
    assert conn.body_done is done
    if done:
        assert await conn.read_body() == b""


# --- the response head ---------------------------------------------------------------------------


async def read_head(data: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    conn = connection()
    conn.data_received(data)
    # a head that is complete never waits: a mutant that waits times out here
    return await conn.read_head(timeout=5)


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (b"\r\n\r\n", "not an HTTP/1.1 status line: b''"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "not an HTTP/1.1 status line: b'HTTP/1.1  200 OK'"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"x" * 150 + b"\r\n\r\n",
            f"malformed header line: {b'x' * 100!r}",
        ),
    ],
    ids=["empty", "two-spaces", "long-line"],
)
async def test_a_bad_head_is_refused_at_once_in_words_that_quote_it(head: bytes, said: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError) as info:
        await read_head(head)
    assert str(info.value) == said


async def test_a_header_value_may_hold_colons() -> None:
    status, reason, headers = await read_head(
        b"HTTP/1.1 301 Moved\r\nLocation: http://a:1/b\r\nDate: Tue, 01 Dec 2026 05:30:32 GMT"
        b"\r\n\r\n"
    )
    assert (status, reason) == (301, b"Moved")
    assert headers == [(b"Location", b"http://a:1/b"), (b"Date", b"Tue, 01 Dec 2026 05:30:32 GMT")]


async def test_a_head_may_fill_the_limit_before_its_end_arrives() -> None:
    start = b"HTTP/1.1 200 OK\r\nx-a: "
    conn = connection()
    conn.data_received(start + b"a" * (MAX_HEAD_BYTES - len(start)))
    reader = asyncio.create_task(conn.read_head(timeout=5))
    await asyncio.sleep(0)  # it waits: exactly at the limit is not past it
    conn.data_received(b"\r\n\r\n")
    status, _, headers = await reader
    assert status == 200 and len(headers[0][1]) == MAX_HEAD_BYTES - len(start)


# --- one connection's reading --------------------------------------------------------------------


async def test_bytes_that_arrive_while_nobody_reads_are_kept() -> None:
    conn = connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    reader = asyncio.create_task(conn.read_head(timeout=5))
    await asyncio.sleep(0)  # waiting for the rest of the head
    conn.data_received(b"content-length: 4\r\n\r\n")  # wakes the reader
    conn.data_received(b"ab")  # before it runs: nobody waits now
    conn.data_received(b"cd")
    status, _, headers = await reader
    conn.start_body(headers, no_body=False)
    assert (status, await conn.read_body(), conn.body_done) == (200, b"abcd", True)


async def test_reading_pauses_again_after_each_resume() -> None:
    conn = connection([(b"content-length", b"%d" % (4 * PAUSE_ABOVE))])
    sock = conn._transport
    for _ in range(2):
        conn.data_received(b"x" * (PAUSE_ABOVE + 1))
        assert len(await conn.read_body()) == PAUSE_ABOVE + 1
        reader = asyncio.create_task(conn.read_body())
        await asyncio.sleep(0)  # the reader waits for more: reading resumes
        conn.data_received(b"y")
        assert await reader == b"y"
    assert sock.calls == ["pause", "resume"] * 2  # type: ignore[union-attr]


async def test_a_read_that_times_out_says_so() -> None:
    conn = connection([(b"content-length", b"5")])
    with pytest.raises(httpx.ReadTimeout) as info:
        await conn.read_body(timeout=0.01)  # nothing ever arrives
    assert str(info.value) == "timed out waiting for the server"


async def test_a_connection_lost_to_an_error_without_words_is_named_by_its_type() -> None:
    conn = connection([(b"content-length", b"5")])
    conn.connection_lost(ConnectionResetError())
    with pytest.raises(httpx.ReadError) as info:
        await conn.read_body()
    assert str(info.value) == "ConnectionResetError"


# --- the transport -------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Answering(LoopbackServer):
    """Answers each request with OK."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        writer.close()


async def test_the_connection_goes_to_the_host_in_the_url() -> None:
    """A server listening on 127.0.0.2 only (all of 127/8 is loopback on Linux)."""
    async with (
        Answering("127.0.0.2") as url,
        httpx.AsyncClient(transport=H1Transport(no_fallback, 4)) as client,
    ):
        assert (await client.get(url + "/x")).content == b"ok"


async def test_a_url_without_a_port_dials_port_80_and_a_refusal_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The address dialled, recorded by the loop (nothing is sent to a real port 80); the
    OSError's words become the ConnectError's."""
    dialled = []

    async def refuse(factory, host, port):  # type: ignore[no-untyped-def]
        dialled.append((host, port))
        raise ConnectionRefusedError(111, f"Connect call failed ({host!r}, {port})")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", refuse)
    async with httpx.AsyncClient(transport=H1Transport(no_fallback, 4)) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("http://example.invalid/x")
    assert dialled == [("example.invalid", 80)]
    assert str(info.value) == "[Errno 111] Connect call failed ('example.invalid', 80)"


async def test_a_connection_that_never_completes_is_a_connect_timeout() -> None:
    with full_accept_queue() as (host, port):
        async with httpx.AsyncClient(
            transport=H1Transport(no_fallback, 4), timeout=httpx.Timeout(5, connect=0.1)
        ) as client:
            with pytest.raises(httpx.ConnectTimeout) as info:
                await client.get(f"http://{host}:{port}/x")
    assert str(info.value) == "timed out connecting"


async def test_a_failed_request_gives_its_connection_slot_back() -> None:
    """One slot, and requests that cannot connect: each fails in turn, none waits for a
    slot the one before kept."""
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        host, port = bound.getsockname()
        transport = H1Transport(no_fallback, 1)
        async with httpx.AsyncClient(transport=transport) as client, asyncio.timeout(30):
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://{host}:{port}/x")
    assert transport._slots is not None and transport._slots._value == 1


async def test_a_body_closed_twice_gives_back_one_slot_and_one_idle_connection() -> None:
    transport = H1Transport(no_fallback, 1)
    async with Answering() as url:
        response = await transport.handle_async_request(httpx.Request("GET", url + "/x"))
        assert b"".join([piece async for piece in response.stream]) == b"ok"
        await response.stream.aclose()
        await response.stream.aclose()
        assert [len(idle) for idle in transport._idle.values()] == [1]
        assert transport._slots is not None and transport._slots._value == 1
        await transport.aclose()


def test_the_default_fallback_is_httpx_transport_under_the_same_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    transport = default_transport(httpx.Limits(max_connections=3))
    assert isinstance(transport, H1Transport)
    fallback = transport._make_fallback()
    assert isinstance(fallback, httpx.AsyncHTTPTransport)
    assert fallback._pool._max_connections == 3
