"""The lean HTTP/1.1 transport (backends/h1_transport.py) against its slow reference, httpx's
own transport: the same server bytes, split anyhow, give the same status, headers and body;
framing errors and refused connections raise httpx's exception types; connections are
reused after a whole body and closed after a partial one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.loopback_tcp import LoopbackServer

from deepconf.backends.h1_transport import H1Transport, _Connection, default_transport

LIMITS = httpx.Limits(max_connections=8)


class RawServer(LoopbackServer):
    """Answers every request with `reply`, written in `splits`-byte pieces (0: at once);
    counts the connections it accepted."""

    def __init__(self, reply: bytes, splits: int = 0, close: bool = False) -> None:
        super().__init__()
        self.reply, self.splits, self.close = reply, splits, close
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length:
                    await reader.readexactly(length[0])
                step = self.splits or len(self.reply)
                for i in range(0, len(self.reply), step):
                    writer.write(self.reply[i : i + step])
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()


async def fetch(transport: httpx.AsyncBaseTransport, url: str) -> tuple:
    """What a caller sees of one POST: status, version, reason, headers and body."""
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(url + "/x", content=b'{"a": 1}')
        headers = [(k, v) for k, v in response.headers.items() if k != "date"]
        version, reason = response.http_version, response.reason_phrase
        return response.status_code, version, reason, headers, response.content


def no_fallback() -> httpx.AsyncBaseTransport:
    raise AssertionError("a plain-http request went to httpx's transport, not the lean one")


def both() -> list[httpx.AsyncBaseTransport]:
    return [httpx.AsyncHTTPTransport(limits=LIMITS), H1Transport(no_fallback, 8)]


SSE = b"".join(b'data: {"i": %d}\n\n' % i for i in range(20))
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e) + 2, e + b"\n\n") for e in SSE.split(b"\n\n")[:-1])
    + b"0\r\nx-trailer: 1\r\n\r\n"
)
PLAIN_CHUNKS = CHUNKED.replace(b";ext=1", b"")  # whole chunks back to back: the fast loop
LENGTH = (
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n\r\nhello world"
)
TO_CLOSE = b'HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{"to": "the close"}'
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH
HINTS = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + LENGTH
NO_REASON = b"HTTP/1.1 404\r\ncontent-length: 2\r\n\r\nno"


@pytest.mark.parametrize(
    "reply", [CHUNKED, PLAIN_CHUNKS, LENGTH, TO_CLOSE, CONTINUE, HINTS, NO_REASON]
)
@pytest.mark.parametrize("splits", [0, 1, 7, 100])
async def test_the_lean_transport_reads_what_httpx_reads(reply: bytes, splits: int) -> None:
    """Chunk extensions and trailers, Content-Length, an HTTP/1.0 body to the close, one
    or two informational heads first, no reason phrase; the bytes at once, one at a time,
    or in 7-byte pieces."""
    got = []
    for transport in both():
        async with RawServer(reply, splits, close=reply is TO_CLOSE) as url:
            got.append(await fetch(transport, url))
    assert got[0] == got[1]


@pytest.mark.parametrize(
    "reply",
    [
        CHUNKED[:-30],  # closes mid-body
        CHUNKED.replace(b"transfer-encoding", b"x-te").replace(b"HTTP/1.1", b"HTTP/1.0")[:60],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
        b"",  # closes before any answer
    ],
)
async def test_broken_replies_raise_httpx_errors_as_httpx_does(reply: bytes) -> None:
    kinds = []
    for transport in both():
        async with RawServer(reply, close=True) as url:
            try:
                await fetch(transport, url)
                kinds.append(None)
            except httpx.TransportError as exc:
                kinds.append(isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError))
    assert kinds[0] == kinds[1]


async def test_a_refused_connection_is_an_httpx_connect_error() -> None:
    async with RawServer(b"") as url:
        pass  # closed: nothing listens there now
    with pytest.raises(httpx.ConnectError):
        await fetch(H1Transport(no_fallback, 8), url)


async def test_a_whole_body_keeps_the_connection_a_partial_one_closes_it() -> None:
    server = RawServer(CHUNKED, splits=7)
    async with server as url:
        transport = H1Transport(no_fallback, 8)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(url + "/x")).content == SSE
            assert server.connections == 1  # reused
            async with client.stream("GET", url + "/x") as response:
                parts: AsyncIterator[bytes] = response.aiter_bytes()
                await anext(parts)  # then closed early: a prune
            assert (await client.get(url + "/x")).content == SSE
            assert server.connections == 2  # the partial one was not reused


def test_proxies_in_the_environment_keep_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy set, no transport is given, so httpx mounts the proxy as it always did."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert default_transport(LIMITS) is None
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert isinstance(default_transport(LIMITS), H1Transport)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([CHUNKED, PLAIN_CHUNKS]), st.lists(st.integers(1, 2000), max_size=12))
def test_chunked_bodies_split_anywhere_give_the_same_bytes(reply: bytes, cuts: list[int]) -> None:
    """The body of a chunked reply fed in reads cut anywhere: whole chunks go through the
    fast loop, the rest through the general steps, and the bytes are the events, in order."""
    body = reply.split(b"\r\n\r\n", 1)[1]
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop)
        conn.start_body([(b"transfer-encoding", b"chunked")], no_body=False)
        got, last = [], 0
        for cut in [*sorted(c for c in cuts if c < len(body)), len(body)]:
            conn.data_received(body[last:cut])
            last = cut
            got.append(conn._take_chunked())
    finally:
        loop.close()
    assert b"".join(got) == SSE and conn.body_done
