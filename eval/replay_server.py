"""A replay server: an OpenAI-compatible endpoint that streams pre-built vLLM chat chunks as
fast as a socket takes them, for measuring the client's cost per token.

A GPU server emits one chunk per token per stream (~1.8 KB of JSON with top-20 logprobs);
this server sends exactly those bytes, one SSE event per write, with no model behind them, so
everything the client spends is the client's own. Each request gets `max_tokens` tokens (the
stream is built once per length and answer, then reused) ending in `\\boxed{A}`, with A chosen
by the request's seed, and a finish reason and usage that match, so deepconf counts every
trace. It runs in its own process (`python -m deepconf.eval.replay_server --port P`): on a
2-core machine the client and the server then each have a core.

    python -m deepconf.eval.replay_server --port 8500 &
    deepconf solve --base-url http://127.0.0.1:8500/v1 --mode offline --budget 128 ...
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from deepconf.eval.bench_stream import split_events, vllm_chat_stream

MODEL = "replay-model"
ANSWERS = ("42", "42", "42", "17")  # by seed % 4: a clear winner, and something to outvote


@functools.lru_cache(maxsize=64)
def events(n_tokens: int, answer: str) -> list[bytes]:
    """The SSE events of one stream, built once per (length, answer)."""
    return split_events(vllm_chat_stream(n_tokens, 1, answer=f" \\boxed{{{answer}}}"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    for event in events(n_tokens, ANSWERS[seed % len(ANSWERS)]):
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Any, status: int, ctype: bytes, data: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": data})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
