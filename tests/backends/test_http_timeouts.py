"""The HTTP backend's timeouts before the first byte of a stream (backends/openai_http.py):
a server that takes the connection but never answers the request, and one whose connection
never completes (a full accept queue), each end the trace at their timeout with the
ConnectError that says so, instead of waiting forever. The token deadline after the head
is the watchdog's (tests/backends/test_watchdog.py, test_stream_integrity.py).

Pinned by mutation testing (.ci/mutation): with httpx's read or connect timeout dropped from
the backend's client, these hung."""

from __future__ import annotations

import asyncio

import pytest
from support.dead_ports import full_accept_queue
from support.read_paths import READ_PATHS, read_trace, use_read_path

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.config import SamplingConfig
from deepconf.errors import ConnectError


async def trace(base_url: str, **config: object) -> list[TokenBatch]:
    cfg = HttpBackendConfig(base_urls=[base_url], model="m", probe=False, max_retries=0, **config)
    backend = OpenAIHttpBackend(cfg)
    await backend.open()
    try:
        request = TraceRequest(0, "What is 3+4?", SamplingConfig(), top_logprobs=2)
        async with asyncio.timeout(20):
            return await read_trace(backend, request)  # a hang fails here, not in pytest-timeout
    finally:
        await backend.aclose()


@pytest.fixture(autouse=True, params=READ_PATHS)
def read_path(request: pytest.FixtureRequest) -> str:
    """Every test here reads its traces by stream() and by push() (tests/support/read_paths.py)."""
    return use_read_path(request.param)


async def test_a_server_that_never_answers_the_request_ends_the_trace_at_the_token_timeout():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the request; then nothing, with the connection open
        await asyncio.Event().wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        with pytest.raises(ConnectError) as info:
            await trace(url, token_timeout=0.2)
    finally:
        server.close()
    assert str(info.value) == (
        f"{url} did not answer in time (ReadTimeout): raise the timeout or check that the"
        " server is not overloaded"
    )


async def test_a_connection_that_never_completes_ends_the_trace_at_the_connect_timeout():
    with full_accept_queue() as (host, port), pytest.raises(ConnectError) as info:
        url = f"http://{host}:{port}/v1"
        await trace(url, connect_timeout=0.2)
    assert str(info.value).startswith(f"{url} did not answer in time (ConnectTimeout)")
