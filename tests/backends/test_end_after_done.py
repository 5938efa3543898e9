"""After [DONE] the backend reads on to the body's end, so the connection is reused: at
fleet scale a new TCP connection per trace would leave a TIME_WAIT socket per trace. A
server that holds the body open after [DONE] costs a trace END_AFTER_DONE_S, no more, and
the trace still counts.

The server here is raw asyncio on loopback, so the test decides exactly when the chunked
body's terminator is written: 50 ms after [DONE] (uvicorn writes it separately, and a
loaded client read [DONE] alone and closed the connection), or never."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.read_paths import READ_PATHS, read_trace, use_read_path

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends import response_reader
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.config import SamplingConfig

TOP = [{"token": "7", "logprob": -0.1}, {"token": "8", "logprob": -2.5}]
CHUNK = {
    "choices": [
        {
            "index": 0,
            "delta": {"content": "The answer is \\boxed{7}."},
            "logprobs": {"content": [{"token": "7", "logprob": -0.1, "top_logprobs": TOP}]},
            "finish_reason": "stop",
        }
    ]
}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawServer:
    """Answers every request on a connection with one scored token, then [DONE]; then the
    body's terminator `end_after` seconds later (None: never; "cut": the connection closed
    instead, the body left incomplete). Counts connections."""

    def __init__(self, end_after: float | str | None) -> None:
        self.end_after = end_after
        self.connections = 0
        self.closed_by_client = 0
        self.requests = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                writer.write(HEAD + chunked(b"data: " + json.dumps(CHUNK).encode() + b"\n\n"))
                writer.write(chunked(b"data: [DONE]\n\n"))
                await writer.drain()
                if self.end_after == "cut":
                    return  # closed mid-body: the client's read after [DONE] fails
                if self.end_after is None:
                    await reader.read()  # hold the body open until the client goes away
                    self.closed_by_client += 1
                    return
                await asyncio.sleep(float(self.end_after))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()


async def trace(backend: OpenAIHttpBackend) -> list[TokenBatch]:
    request = TraceRequest(0, "What is 3+4?", SamplingConfig(), top_logprobs=2)
    return await read_trace(backend, request)


@pytest.fixture(autouse=True, params=READ_PATHS)
def read_path(request: pytest.FixtureRequest) -> str:
    """Every test here reads its traces by stream() and by push() (tests/support/read_paths.py)."""
    return use_read_path(request.param)


def backend_for(server: RawServer) -> OpenAIHttpBackend:
    config = HttpBackendConfig(base_urls=[server.base_url], model="m", probe=False)
    return OpenAIHttpBackend(config)


async def two_traces_count(server: RawServer) -> None:
    """Two traces one after the other, each complete: its finish reason and its one token."""
    backend = backend_for(server)
    try:
        for _ in range(2):
            batches = await trace(backend)
            assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
            assert sum(b.n_tokens for b in batches) == 1
    finally:
        await backend.aclose()


async def test_a_body_that_ends_after_done_keeps_its_connection() -> None:
    async with RawServer(end_after=0.05) as server:
        backend = backend_for(server)
        try:
            for _ in range(3):
                batches = await trace(backend)
                assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
        finally:
            await backend.aclose()
    assert (server.requests, server.connections) == (3, 1)


async def test_a_body_held_open_after_done_costs_the_grace_and_then_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trace counts (its finish reason arrived); the held connection is closed, so the
    next trace opens a new one."""
    monkeypatch.setattr(response_reader, "END_AFTER_DONE_S", 0.05)
    async with RawServer(end_after=None) as server:
        await two_traces_count(server)
        for _ in range(100):  # the server's side of the second close, at most ~1 s away
            if server.closed_by_client == 2:
                break
            await asyncio.sleep(0.01)
    assert (server.requests, server.connections, server.closed_by_client) == (2, 2, 2)


async def test_a_body_cut_after_done_still_counts_the_trace() -> None:
    """A connection closed after [DONE] without the body's terminator is a protocol error in
    the read after [DONE]: the trace is complete already, so it counts, and the next trace
    opens a new connection."""
    async with RawServer(end_after="cut") as server:
        await two_traces_count(server)
    assert (server.requests, server.connections) == (2, 2)
