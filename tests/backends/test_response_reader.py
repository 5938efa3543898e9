"""Push reading (backends/response_reader.py, h1_transport.py `pump`, deepconf/backend.py
`deliver`): the body pieces a pump hands its sink are the pieces `read_body` returns, for
reads cut anywhere; a sink that says stop, raises, or whose pump is cancelled is never called
again; and over the real scripted server a push stops the server's stream when its consumer
says stop, passes its consumer's exception through unchanged, and equals `stream()` batch
for batch. Every integrity and error test of the backend runs on both paths besides
(test_openai_http.py, test_stream_integrity.py: tests/support/read_paths.py)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fake_backend import FakeBackend
from support.fake_backend import Script as FakeScript
from support.fake_socket import FakeSocketTransport
from support.scripted_server import Script, scripted_server

from deepconf.backend import PushBackend, TokenBatch, TraceRequest, deliver
from deepconf.backends.h1_transport import _Connection
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.confidence import token_confidence
from deepconf.config import SamplingConfig
from deepconf.errors import StreamError

__all__ = ["scripted_server"]  # the fixture, imported for pytest

CHUNKED = [(b"transfer-encoding", b"chunked")]


def connection(loop: asyncio.AbstractEventLoop, head: list[tuple[bytes, bytes]]) -> _Connection:
    conn = _Connection(loop)
    conn.connection_made(FakeSocketTransport())  # type: ignore[arg-type]
    conn.start_body(head, no_body=False)
    return conn


@st.composite
def bodies(draw):  # type: ignore[no-untyped-def]
    """A body in one of the three framings, its data, and where the reads cut it; `whole`
    False: the connection closes before the body's end."""
    datas = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6))
    framing = draw(st.sampled_from(["chunked", "length", "close"]))
    data = b"".join(datas)
    if framing == "chunked":
        head, body = CHUNKED, b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas) + b"0\r\n\r\n"
    elif framing == "length":
        head, body = [(b"content-length", str(len(data)).encode())], data
    else:
        head, body = [], data
    whole = framing == "close" or draw(st.booleans())
    if not whole:
        body = body[: draw(st.integers(0, len(body) - 1))]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=8))
    return head, body, sorted(set(cuts)), whole


async def pulled(head, body: bytes, cuts: list[int]) -> tuple[list[bytes], BaseException | None]:
    """The reference: read_body after each read, then the close."""
    conn = connection(asyncio.get_running_loop(), head)
    pieces: list[bytes] = []
    try:
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
            conn.data_received(body[start:end])
            while conn.body_done is False and (data := conn._next_piece()):
                pieces.append(data)
        conn.eof_received()
        while data := await conn.read_body():
            pieces.append(data)
    except httpx.HTTPError as exc:
        return pieces, exc
    return pieces, None


async def pumped(head, body: bytes, cuts: list[int]) -> tuple[list[bytes], BaseException | None]:
    """The same reads with a pump waiting: every piece reaches the sink from data_received."""
    conn = connection(asyncio.get_running_loop(), head)
    pieces: list[bytes] = []

    def sink(data: bytes) -> bool:
        pieces.append(data)
        return False

    pump = asyncio.ensure_future(conn.pump(sink))
    await asyncio.sleep(0)  # the pump is waiting
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        conn.data_received(body[start:end])
    conn.eof_received()
    try:
        await pump
    except httpx.HTTPError as exc:
        return pieces, exc
    return pieces, None


@settings(max_examples=200, deadline=None)
@given(bodies())
def test_a_pump_hands_on_the_pieces_read_body_returns(case) -> None:  # type: ignore[no-untyped-def]
    """Piece for piece, and the same error (type and words) for a body the close cut."""
    head, body, cuts, whole = case

    async def both():  # type: ignore[no-untyped-def]
        return await pulled(head, body, cuts), await pumped(head, body, cuts)

    (want, want_error), (got, got_error) = asyncio.run(both())
    assert got == want
    assert type(got_error) is type(want_error) and str(got_error) == str(want_error)
    if whole:
        assert got_error is None


async def test_a_sink_that_says_stop_is_not_called_again():
    """Bytes after the stop stay in the buffer; the pump has returned."""
    conn = connection(asyncio.get_running_loop(), CHUNKED)
    calls: list[bytes] = []
    pump = asyncio.ensure_future(conn.pump(lambda data: calls.append(data) is None))
    await asyncio.sleep(0)
    conn.data_received(b"3\r\nabc\r\n")
    await pump
    conn.data_received(b"3\r\ndef\r\n")
    assert calls == [b"abc"]
    assert await conn.read_body() == b"def"


async def test_what_a_sink_raises_comes_out_of_the_pump_and_it_is_not_called_again():
    conn = connection(asyncio.get_running_loop(), CHUNKED)
    calls = []

    def sink(data: bytes) -> bool:
        calls.append(data)
        raise ValueError("the consumer broke")

    pump = asyncio.ensure_future(conn.pump(sink))
    await asyncio.sleep(0)
    conn.data_received(b"1\r\na\r\n")
    conn.data_received(b"1\r\nb\r\n")
    with pytest.raises(ValueError, match="the consumer broke"):
        await pump
    assert calls == [b"a"]


async def test_a_cancelled_pump_leaves_later_bytes_to_read_body():
    conn = connection(asyncio.get_running_loop(), CHUNKED)
    calls: list[bytes] = []
    pump = asyncio.ensure_future(conn.pump(lambda data: calls.append(data) is not None))
    await asyncio.sleep(0)
    pump.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pump
    conn.data_received(b"2\r\nhi\r\n")
    assert calls == [] and await conn.read_body() == b"hi"


async def test_bytes_that_came_with_the_head_are_pushed_at_once():
    """A pump started after its body's first bytes arrived hands them on before waiting."""
    conn = connection(asyncio.get_running_loop(), CHUNKED)
    conn.data_received(b"2\r\nhi\r\n0\r\n\r\n")
    calls: list[bytes] = []
    await conn.pump(lambda data: calls.append(data) is not None)
    assert calls == [b"hi"] and conn.body_done


# --- the backend's push over the real scripted server ----------------------------------------


def backend_for(server, **kw) -> OpenAIHttpBackend:  # type: ignore[no-untyped-def]
    return OpenAIHttpBackend(
        HttpBackendConfig(base_urls=[server.base_url], model="m", probe=False, **kw)
    )


def request(seed: int = 1) -> TraceRequest:
    return TraceRequest(0, "What is 3+4?", SamplingConfig(), top_logprobs=20, seed=seed)


def joined(batches: list[TokenBatch]) -> tuple:  # type: ignore[type-arg]
    """What a trace made of its batches (where reads cut them is the network's business)."""
    confs = [
        b.token_conf if b.token_conf is not None else token_confidence(b.top_logprobs)
        for b in batches
    ]
    return (
        np.concatenate([b.top_logprobs for b in batches]).tolist(),
        np.concatenate(confs).tolist(),
        "".join(b.text for b in batches),
        "".join(b.reasoning for b in batches),
        [b.finish_reason for b in batches if b.finish_reason],
        [b.usage for b in batches if b.usage],
    )


@pytest.mark.parametrize("delay", [0.0, 0.01], ids=["one-read", "paced"])
async def test_push_and_stream_give_the_same_trace(scripted_server, delay):
    """Multi-token chunks, reasoning and content, the finish reason and usage: the same
    rows, confidences and text either way, whether it arrives in one read or many."""
    script = Script.from_text(
        "The answer is \\boxed{7}.", reasoning="Add.", tokens_per_chunk=3, delay=delay
    )
    scripted_server.default = script
    backend = backend_for(scripted_server)
    try:
        async with contextlib.aclosing(backend.stream(request())) as stream:
            pulled = [b async for b in stream]
        pushed: list[TokenBatch] = []
        await backend.push(request(), lambda b: pushed.append(b) is not None)
    finally:
        await backend.aclose()
    assert joined(pushed) == joined(pulled)
    assert joined(pushed)[2] == "The answer is \\boxed{7}." and joined(pushed)[4] == ["stop"]
    if delay:
        assert len(pushed) > 2  # paced: several reads, each handed on as it came


async def test_a_consumer_that_says_stop_stops_the_servers_stream(scripted_server):
    """What a prune does: the server records the disconnect far short of the script's end,
    and no batch reaches the consumer after its stop."""
    scripted_server.default = Script.from_text(" ".join(["step"] * 400), delay=0.005)
    backend = backend_for(scripted_server)
    got: list[TokenBatch] = []

    def consume(batch: TokenBatch) -> bool:
        got.append(batch)
        return sum(b.n_tokens for b in got) >= 10

    try:
        await backend.push(request(), consume)
    finally:
        await backend.aclose()
    (rec,) = scripted_server.streams
    assert scripted_server.wait_for(lambda: rec.disconnected, timeout=5)
    assert 10 <= sum(b.n_tokens for b in got) < 100 and not rec.finished


async def test_a_consumers_exception_comes_out_unchanged_and_closes_the_stream(scripted_server):
    """Not a StreamError about the server: the consumer's own exception, the same object,
    raised once; the server sees the stream closed."""
    scripted_server.default = Script.from_text(" ".join(["step"] * 400), delay=0.005)
    backend = backend_for(scripted_server)
    mine = KeyError("the consumer's own")

    def consume(batch: TokenBatch) -> bool:
        raise mine

    try:
        with pytest.raises(KeyError) as info:
            await backend.push(request(), consume)
    finally:
        await backend.aclose()
    assert info.value is mine
    (rec,) = scripted_server.streams
    assert scripted_server.wait_for(lambda: rec.disconnected, timeout=5) and not rec.finished


async def test_a_cut_stream_fails_the_push_as_it_fails_the_stream(scripted_server):
    scripted_server.default = Script.from_text("one two three four five six", drop_after=3)
    backend = backend_for(scripted_server)
    got: list[TokenBatch] = []
    try:
        with pytest.raises(StreamError, match="broke mid-trace"):
            await backend.push(request(), lambda b: got.append(b) is not None)
    finally:
        await backend.aclose()
    assert sum(b.n_tokens for b in got) == 3


# --- deliver(): push where a backend has it, stream() elsewhere ------------------------------


async def test_deliver_reads_the_stream_of_a_backend_without_push():
    backend = FakeBackend(default=FakeScript(conf=12.0, n=5))
    assert not isinstance(backend, PushBackend)
    got: list[TokenBatch] = []
    await deliver(backend, request(), lambda b: got.append(b) is not None)
    assert got and got[-1].finish_reason is not None


async def test_deliver_stops_where_the_consumer_says():
    backend = FakeBackend(default=FakeScript(conf=12.0, n=5))
    got: list[TokenBatch] = []
    await deliver(backend, request(), lambda b: got.append(b) is None)
    assert len(got) == 1


def test_the_http_backend_pushes():
    assert isinstance(backend_for_url("http://127.0.0.1:9/v1"), PushBackend)


def backend_for_url(url: str) -> OpenAIHttpBackend:
    return OpenAIHttpBackend(HttpBackendConfig(base_urls=[url], model="m", probe=False))
