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

    python -m deepconf.eval.replay_server --port 8500 &
    deepconf solve --base-url http://127.0.0.1:8500/v1 --mode offline --budget 128 ...
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from deepconf.eval.bench_stream import split_events, vllm_chat_stream

MODEL = "replay-model"
ANSWERS = ("42", "42", "42", "17")  # by seed % 4: a clear winner, and something to outvote

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@functools.lru_cache(maxsize=64)
def events(n_tokens: int, answer: str) -> list[bytes]:
    """The SSE events of one stream, built once per (length, answer)."""
    return split_events(vllm_chat_stream(n_tokens, 1, answer=f" \\boxed{{{answer}}}"))


@functools.lru_cache(maxsize=64)
def writes(n_tokens: int, answer: str, events_per_write: int) -> list[bytes]:
    """The stream's events joined `events_per_write` at a time: what each write sends."""
    evs = events(n_tokens, answer)
    return [b"".join(evs[i : i + events_per_write]) for i in range(0, len(evs), events_per_write)]


async def app(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    token_delay: float = 0.0,
    events_per_write: int = 1,
) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    if path == "/v1/models":
        data = json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()
        await _respond(send, 200, b"application/json", data)
        return
    if path != "/v1/chat/completions":
        await _respond(send, 404, b"application/json", b'{"error": {"message": "no route"}}')
        return
    request = json.loads(body or b"{}")
    n_tokens = int(request.get("max_tokens") or 2000)
    seed = int(request.get("seed") or 0)
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    answer = ANSWERS[seed % len(ANSWERS)]
    for i, data in enumerate(writes(n_tokens, answer, events_per_write)):
        if i and token_delay:
            await asyncio.sleep(token_delay)
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def configured(token_delay: float, events_per_write: int) -> ASGIApp:
    """`app` sleeping `token_delay` seconds between two writes of a stream, each write
    carrying `events_per_write` events."""

    async def configured_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send, token_delay, events_per_write)

    return configured_app


async def _respond(send: Any, status: int, ctype: bytes, data: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": data})


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
    args = ap.parse_args(argv)
    if args.events_per_write < 1:
        ap.error("--events-per-write must be at least 1")
    import uvicorn

    plain = args.token_delay <= 0 and args.events_per_write == 1
    uvicorn.run(
        app if plain else configured(args.token_delay, args.events_per_write),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
