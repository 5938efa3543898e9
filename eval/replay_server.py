"""A replay server: an OpenAI-compatible endpoint that streams pre-built vLLM chat chunks as
fast as a socket takes them, for measuring the client's cost per token.

A GPU server emits one chunk per token per stream (~1.8 KB of JSON with top-20 logprobs);
this server sends exactly those bytes, one SSE event per write, with no model behind them, so
everything the client spends is the client's own. Each request gets `max_tokens` tokens (the
stream is built once per length and answer, then reused) ending in `\\boxed{A}`, with A chosen
by the request's seed, and a finish reason and usage that match, so deepconf counts every
trace. It runs in its own process (`python -m deepconf.eval.replay_server --port P`): on a
2-core machine the client and the server then each have a core. `--token-delay S` paces every
stream instead, one event per S seconds, as a busy GPU does: that holds many streams open at
once (`deepconf bench memory` keeps 10,000 in flight) without the client falling behind.
`--events-per-write N` sends N events per write: the client reads and decodes the same
bytes (a client that falls behind reads many events at once anyway), while the server's own
CPU per token drops several times, which matters where it shares the client's cores
(`deepconf bench workers`): a real fleet's servers use none of the client machine's CPU.

`--sendfile` hands each unpaced stream to the kernel whole from a file written once per
stream shape (sendfile(2), asyncio's `loop.sendfile`): the same bytes again, without this
process copying them into the socket, which halves its CPU per byte (0.45 against 1.08
CPU-s per 2 GiB over loopback, measured here) and does one system call where the writes did
hundreds. The benchmarks whose servers share the client's cores use it (`bench workers`,
`bench serve-workers`); the others keep the writes a GPU server makes.

The server is a bare asyncio protocol, not an ASGI app under uvicorn: its CPU is the
benchmarks' noise (it shares the client's two cores), and per write it does no more than
hand the socket a chunk that was framed once, when the stream was first built. It speaks
the HTTP/1.1 a client needs here: keep-alive, a Content-Length request body, chunked
responses, writing paused while the socket is full (asyncio's flow control), and a stream
dropped when its client closes (a pruned trace).

    python -m deepconf.eval.replay_server --port 8500 &
    deepconf solve --base-url http://127.0.0.1:8500/v1 --mode offline --budget 128 ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import tempfile
from typing import IO

from deepconf.eval.bench_stream import split_events, vllm_chat_stream

MODEL = "replay-model"
ANSWERS = ("42", "42", "42", "17")  # by seed % 4: a clear winner, and something to outvote
MAX_HEAD = 64 * 1024  # a request head longer than this is refused (431)
MAX_BODY = 16 * 1024 * 1024  # and a body longer than this (413)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"


@functools.lru_cache(maxsize=64)
def events(n_tokens: int, answer: str) -> list[bytes]:
    """The SSE events of one stream, built once per (length, answer)."""
    return split_events(vllm_chat_stream(n_tokens, 1, answer=f" \\boxed{{{answer}}}"))


@functools.lru_cache(maxsize=64)
def writes(n_tokens: int, answer: str, events_per_write: int) -> list[bytes]:
    """The stream's events joined `events_per_write` at a time: what each write sends."""
    evs = events(n_tokens, answer)
    return [b"".join(evs[i : i + events_per_write]) for i in range(0, len(evs), events_per_write)]


@functools.lru_cache(maxsize=64)
def framed(n_tokens: int, answer: str, events_per_write: int) -> tuple[bytes, ...]:
    """`writes`, each framed as one HTTP/1.1 chunk, and the last chunk after them."""
    chunks = [b"%x\r\n%s\r\n" % (len(w), w) for w in writes(n_tokens, answer, events_per_write)]
    return (*chunks, LAST_CHUNK)


@functools.lru_cache(maxsize=64)
def stream_file(n_tokens: int, answer: str, events_per_write: int) -> tuple[IO[bytes], int]:
    """One stream's whole response (head, `framed` chunks) in an unnamed file, and its size:
    what `--sendfile` hands the kernel. Each shape's file lives as long as the server."""
    file = tempfile.TemporaryFile()  # noqa: SIM115  (cached for the process's life)
    file.write(STREAM_HEAD + b"".join(framed(n_tokens, answer, events_per_write)))
    file.flush()
    return file, file.tell()


def plain_response(status: str, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n"
    head += "connection: close\r\n\r\n" if close else "\r\n"
    return head.encode("ascii") + body


class ReplayProtocol(asyncio.Protocol):
    """One client connection: requests one after another (HTTP/1.1 keep-alive), each answered
    in full before the next is read."""

    def __init__(self, token_delay: float, events_per_write: int, sendfile: bool = False) -> None:
        self.token_delay = token_delay
        self.events_per_write = events_per_write
        self.sendfile = sendfile and token_delay <= 0  # a paced stream is written event by event
        self.sending: asyncio.Task[None] | None = None  # the stream sendfile is sending
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.pending: tuple[bytes, ...] = ()  # the stream's chunks not yet written
        self.next_chunk = 0
        self.paused = False  # the socket is full: resume_writing goes on
        self.timer: asyncio.TimerHandle | None = None
        self.close_after = False  # the request said `Connection: close`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # a pruned trace: the stream stops here
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.timer is None:
            self._write_on()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self._streaming():
            self._next_request()

    def _streaming(self) -> bool:
        return self.sending is not None or self.next_chunk < len(self.pending)

    def _next_request(self) -> None:
        """Answers the request at the front of the buffer, once it is all there."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._refuse("431 Request Header Fields Too Large")
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        method, path, *_ = [*lines[0].split(" "), "", ""]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._refuse("411 Length Required")  # no client here sends chunked requests
            return
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._refuse("400 Bad Request")
            return
        if length > MAX_BODY:
            self._refuse("413 Content Too Large")
            return
        if len(self.buffer) < end + 4 + length:
            return  # the body is still coming
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        self.close_after = headers.get("connection", "").lower() == "close"
        self._answer(method, path, body)

    def _answer(self, method: str, path: str, body: bytes) -> None:
        path = path.split("?", 1)[0]
        if path == "/v1/models":
            listing = json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()
            self._send_whole(plain_response("200 OK", listing, self.close_after))
        elif path != "/v1/chat/completions" or method != "POST":
            error = b'{"error": {"message": "no route"}}'
            self._send_whole(plain_response("404 Not Found", error, self.close_after))
        else:
            try:
                request = json.loads(body or b"{}")
                n_tokens = int(request.get("max_tokens") or 2000)
                seed = int(request.get("seed") or 0)
            except (ValueError, TypeError, AttributeError):
                error = b'{"error": {"message": "the body is not a chat request"}}'
                self._send_whole(plain_response("400 Bad Request", error, self.close_after))
                return
            answer = ANSWERS[seed % len(ANSWERS)]
            if self.sendfile:
                file, size = stream_file(n_tokens, answer, self.events_per_write)
                self.sending = asyncio.get_running_loop().create_task(self._send_file(file, size))
                return
            self.pending = framed(n_tokens, answer, self.events_per_write)
            self.next_chunk = 0
            assert self.transport is not None
            self.transport.write(STREAM_HEAD)
            self._write_on()

    def _write_on(self) -> None:
        """Writes the stream's next chunks: all the socket takes, or one per `token_delay`."""
        self.timer = None
        transport = self.transport
        while transport is not None and not self.paused and self._streaming():
            transport.write(self.pending[self.next_chunk])
            self.next_chunk += 1
            if self.token_delay > 0 and self.next_chunk < len(self.pending) - 1:
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(self.token_delay, self._write_on)
                return
        if transport is not None and not self._streaming() and self.pending:
            self.pending, self.next_chunk = (), 0
            self._done()

    async def _send_file(self, file: IO[bytes], size: int) -> None:
        """The whole response by sendfile; reading waits meanwhile (asyncio pauses it), so a
        pipelined request is read once the stream is out."""
        transport = self.transport
        try:
            if transport is None:
                return  # gone before the task ran
            await asyncio.get_running_loop().sendfile(transport, file, 0, size)
        except (OSError, RuntimeError):  # the client left (a pruned trace); RuntimeError:
            if self.transport is not None:  # the transport was already closing
                self.transport.close()
            return
        finally:
            self.sending = None
        self._done()

    def _send_whole(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self._done()

    def _done(self) -> None:
        """One response is out: close if asked, else read the next request."""
        if self.transport is None:
            return
        if self.close_after:
            self.transport.close()
        elif self.buffer:
            self._next_request()

    def _refuse(self, status: str) -> None:
        assert self.transport is not None
        message = json.dumps({"error": {"message": status}}).encode()
        self.transport.write(plain_response(status, message, close=True))
        self.transport.close()
        self.buffer = b""


async def serve(port: int, token_delay: float, events_per_write: int, sendfile: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ReplayProtocol(token_delay, events_per_write, sendfile),
        "127.0.0.1",
        port,
        backlog=4096,
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds between two events of a stream (default 0: as fast as the socket takes)",
    )
    ap.add_argument(
        "--events-per-write",
        type=int,
        default=1,
        help="SSE events per write (default 1, as a GPU server sends them)",
    )
    ap.add_argument(
        "--sendfile",
        action="store_true",
        help="send each unpaced stream whole by sendfile(2): the same bytes, half the CPU",
    )
    args = ap.parse_args(argv)
    if args.events_per_write < 1:
        ap.error("--events-per-write must be at least 1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.token_delay, args.events_per_write, args.sendfile))


if __name__ == "__main__":
    main()
