"""The replay server sends the same bytes however many events each write carries, so a
benchmark that batches writes to spare the server's CPU feeds the client the same stream; and
it speaks enough HTTP/1.1 for every client the benchmarks run (keep-alive, pipelined and
split requests, a client that leaves mid-stream, the openai SDK)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest

from deepconf.eval.replay_server import MODEL, ReplayProtocol, events, writes
from deepconf.eval.serve_processes import free_port


@pytest.mark.parametrize("per_write", [1, 7, 16, 10_000])
def test_writes_join_to_the_events_in_order(per_write: int) -> None:
    evs = events(50, "42")
    sent = writes(50, "42", per_write)
    assert b"".join(sent) == b"".join(evs)
    assert len(sent) == -(-len(evs) // per_write)  # ceil: every write full but the last
    assert all(data.count(b"data: ") == per_write for data in sent[:-1])


def served_body(per_write: int, *flags: str) -> bytes:
    """The raw SSE body of one 50-token stream from a replay server on loopback."""
    port = free_port()
    command = [sys.executable, "-P", "-m", "deepconf.eval.replay_server", "--port", str(port)]
    proc = subprocess.Popen([*command, "--events-per-write", str(per_write), *flags])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/models", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)  # start-up poll
        body = {"model": "m", "messages": [], "max_tokens": 50, "seed": 3, "stream": True}
        return httpx.post(url + "/chat/completions", json=body, timeout=30).content
    finally:
        proc.terminate()
        proc.wait()


def test_a_server_writing_16_events_at_once_sends_the_same_stream() -> None:
    one = served_body(1)
    assert one == b"".join(events(50, "17"))  # seed 3 answers 17
    assert served_body(16) == one
    assert served_body(16, "--sendfile") == one


def test_events_per_write_below_one_is_refused() -> None:
    command = [sys.executable, "-P", "-m", "deepconf.eval.replay_server", "--port", "1"]
    done = subprocess.run([*command, "--events-per-write", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--events-per-write must be at least 1" in done.stderr


# --- the protocol itself, in process ---------------------------------------------------------


async def _serving(
    token_delay: float = 0.0, per_write: int = 1, sendfile: bool = False
) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReplayProtocol(token_delay, per_write, sendfile), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


def _chat_request(n_tokens: int, seed: int, close: bool = False) -> bytes:
    body = json.dumps({"messages": [], "max_tokens": n_tokens, "seed": seed}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + body


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one chunked response, the body unframed."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += data[:-2]


@pytest.mark.parametrize("sendfile", [False, True])
async def test_two_requests_sent_at_once_get_two_whole_streams_in_order(sendfile: bool) -> None:
    """Keep-alive and pipelining: the second request waits in the buffer until the first
    stream is out, then gets its own stream on the same connection (written, or sent by
    sendfile while reading waits)."""
    server, port = await _serving(per_write=4, sendfile=sendfile)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(30, seed=0) + _chat_request(20, seed=3, close=True))
        head, first = await _read_chunked(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in head
        assert first == b"".join(events(30, "42"))
        _, second = await _read_chunked(reader)
        assert second == b"".join(events(20, "17"))
        assert await reader.read() == b""  # `connection: close` was honoured
        writer.close()


async def test_a_paced_stream_sends_the_same_bytes_one_write_per_delay() -> None:
    server, port = await _serving(token_delay=0.001)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(25, seed=1))
        _, body = await _read_chunked(reader)
        assert body == b"".join(events(25, "42"))
        writer.close()


async def test_a_request_cut_in_pieces_is_answered_once_whole() -> None:
    server, port = await _serving()
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = _chat_request(10, seed=2)
        for i in range(0, len(request), 7):
            writer.write(request[i : i + 7])
            await writer.drain()
        _, body = await _read_chunked(reader)
        assert body == b"".join(events(10, "42"))
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\n\r\n", b"404"),
        (b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n", b"404"),
        (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\n\r\n[1,2]", b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: x\r\n\r\n", b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", b"411"),
    ],
)
async def test_what_is_not_a_chat_request_gets_a_json_error(
    request_bytes: bytes, status: bytes
) -> None:
    server, port = await _serving()
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.split(b" ")[1] == status
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert b"message" in await reader.readexactly(length)
        writer.close()


async def test_a_client_that_leaves_mid_stream_stops_the_stream() -> None:
    """A pruned trace closes its connection: the server stops writing and serves on."""
    server, port = await _serving(token_delay=0.001)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(2_000, seed=0))  # ~2 s of writes at 1 ms each
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1000)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(5, seed=0))
        _, body = await _read_chunked(reader)
        assert body == b"".join(events(5, "42"))
        writer.close()


async def test_a_client_that_leaves_mid_sendfile_leaves_the_server_serving() -> None:
    """--sendfile: a client that reads a little of a long stream and closes (a pruned
    trace) ends that send; the next connection gets its whole stream."""
    server, port = await _serving(per_write=16, sendfile=True)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(30_000, seed=0))  # 58 MB: more than loopback buffers hold
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1000)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_chat_request(5, seed=0))
        _, body = await _read_chunked(reader)
        assert body == b"".join(events(5, "42"))
        writer.close()


async def test_the_openai_client_streams_every_token() -> None:
    """What `deepconf bench stream --end-to-end` runs as its SDK baseline."""
    openai = pytest.importorskip("openai")
    server, port = await _serving(per_write=16)
    async with server:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "?"}],
            max_tokens=40,
            seed=0,
            stream=True,
            logprobs=True,
            top_logprobs=20,
        )
        tokens = [c async for c in stream if c.choices and c.choices[0].logprobs]
        await client.close()
    assert sum(len(c.choices[0].logprobs.content) for c in tokens) == 40
