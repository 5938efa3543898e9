"""Benchmark: streaming throughput from raw SSE bytes to updated group confidence, one core.

The same vLLM-format chat stream (top-20 logprobs, ~1.8 KB of JSON per token; 1 token per
chunk, and several per chunk) goes through each parsing path, and each path does the same
confidence work after parsing: the (n, k) logprob matrix -> `token_confidence` ->
`GroupWindow.push_many`. Paths, side by side in one run:

    deepconf           SSEDecoder + msgspec decode_payloads (what the backend runs), one
                       network read per SSE event, and with 64 KiB reads (a backlogged stream)
    deepconf+httpx     the whole OpenAIHttpBackend stream over httpx.MockTransport
    orjson / json      the same framing, each payload parsed fully by orjson / json.loads
    openai SDK         openai.AsyncOpenAI streaming over httpx.MockTransport (pydantic chunks)

Every path must end at the same lowest group confidence; the run fails loudly otherwise.

    python -m deepconf.eval.bench_stream                   # 4000 tokens, k=20, window 2048
    python -m deepconf.eval.bench_stream --tokens 20000 --per-chunk 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from deepconf.backend import TraceRequest
from deepconf.backends.openai_http import PROBE_TOKENS, HttpBackendConfig, OpenAIHttpBackend
from deepconf.backends.sse import SSEDecoder, decode_payloads
from deepconf.confidence import GroupWindow, token_confidence
from deepconf.config import SamplingConfig

K = 20


def vllm_chat_stream(n_tokens: int, per_chunk: int, k: int = K, seed: int = 0) -> bytes:
    """A vLLM /v1/chat/completions stream: role chunk, token chunks, usage, [DONE]."""
    rng = random.Random(seed)

    def entry(tok: str, lp: float) -> dict[str, object]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1730000000}
    head["model"] = "tiiuae/Falcon-H1R-7B"
    events = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    ]
    for start in range(0, n_tokens, per_chunk):
        content = []
        for _ in range(min(per_chunk, n_tokens - start)):
            words = [
                " " + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7)))
                for _ in range(k)
            ]
            lps = sorted((-rng.expovariate(0.3) for _ in range(k)), reverse=True)
            tops = [entry(w, round(lp, 6)) for w, lp in zip(words, lps, strict=True)]
            content.append({**tops[0], "top_logprobs": tops})
        last = start + per_chunk >= n_tokens
        choice = {
            "index": 0,
            "delta": {"content": "".join(c["token"] for c in content)},
            "logprobs": {"content": content},
            "finish_reason": "length" if last else None,
        }
        events.append({**head, "choices": [choice]})
    usage = {"prompt_tokens": 100, "completion_tokens": n_tokens, "total_tokens": 100 + n_tokens}
    events.append({**head, "choices": [], "usage": usage})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def split_events(body: bytes) -> list[bytes]:
    """One piece per SSE event: the worst case, a stream read as it trickles in."""
    return [p + b"\n\n" for p in body.split(b"\n\n") if p]


def split_reads(body: bytes, size: int = 65536) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


class Sink:
    """The confidence work every path does after parsing."""

    def __init__(self, window: int) -> None:
        self.gw = GroupWindow(window)
        self.tokens = 0

    def push(self, top_logprobs: np.ndarray) -> None:
        self.tokens += top_logprobs.shape[0]
        self.gw.push_many(token_confidence(top_logprobs))


# --- paths ------------------------------------------------------------------------------------


def run_deepconf(pieces: list[bytes], window: int) -> Sink:
    sink, sse = Sink(window), SSEDecoder()
    for piece in pieces:
        decoded = decode_payloads(sse.feed(piece), K)
        if decoded.top_logprobs.shape[0]:
            sink.push(decoded.top_logprobs)
    return sink


def _rows_from_dict(obj: dict, rows: list[list[float]]) -> None:
    for choice in obj.get("choices") or []:
        lp = choice.get("logprobs")
        if lp and lp.get("content"):
            rows.extend([t["logprob"] for t in c["top_logprobs"]] for c in lp["content"])


def run_parser(loads: Callable[[bytes], dict]) -> Callable[[list[bytes], int], Sink]:
    def run(pieces: list[bytes], window: int) -> Sink:
        sink, sse = Sink(window), SSEDecoder()
        for piece in pieces:
            for payload in sse.feed(piece):
                if payload == b"[DONE]":
                    break
                rows: list[list[float]] = []
                _rows_from_dict(loads(payload), rows)
                if rows:
                    sink.push(-np.sort(-np.array(rows), axis=1))
        return sink

    return run


def _transport(pieces: list[bytes]) -> httpx.MockTransport:
    """Serves `pieces` to every request, except the backend's capability probe, which gets
    a stream of its own few tokens (so the measured path parses the bytes once)."""
    probe = split_events(vllm_chat_stream(PROBE_TOKENS, 1))

    async def body(parts: list[bytes]) -> AsyncIterator[bytes]:
        for piece in parts:
            yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        parts = probe if json.loads(request.content).get("max_tokens") == PROBE_TOKENS else pieces
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=body(parts))

    return httpx.MockTransport(handler)


async def run_backend(pieces: list[bytes], window: int) -> Sink:
    cfg = HttpBackendConfig(base_urls=["http://bench.invalid/v1"], model="m", top_logprobs=K)
    backend = OpenAIHttpBackend(cfg, transport=_transport(pieces))
    request = TraceRequest(0, "bench", SamplingConfig(), top_logprobs=K)
    sink = Sink(window)
    try:
        async with contextlib.aclosing(backend.stream(request)) as stream:
            async for batch in stream:
                if batch.n_tokens:
                    sink.push(batch.top_logprobs)
    finally:
        await backend.aclose()
    return sink


async def run_openai_sdk(pieces: list[bytes], window: int) -> Sink:
    import openai

    http = httpx.AsyncClient(transport=_transport(pieces))
    client = openai.AsyncOpenAI(base_url="http://bench.invalid/v1", api_key="x", http_client=http)
    sink = Sink(window)
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "bench"}],
        stream=True,
        logprobs=True,
        top_logprobs=K,
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.logprobs and choice.logprobs.content:
                    rows = [[t.logprob for t in c.top_logprobs] for c in choice.logprobs.content]
                    sink.push(-np.sort(-np.array(rows), axis=1))
    await client.close()
    return sink


# --- harness ----------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    per_chunk: int
    tokens_per_s: float
    lowest: float


def measure(fn: Callable[[], Sink], repeats: int) -> tuple[float, Sink]:
    best, sink = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        sink = fn()
        best = min(best, time.perf_counter() - start)
    assert sink is not None
    return best, sink


def bench(n_tokens: int, per_chunk: int, window: int, repeats: int) -> list[Row]:
    body = vllm_chat_stream(n_tokens, per_chunk)
    events, reads = split_events(body), split_reads(body)
    paths: list[tuple[str, Callable[[], Sink]]] = [
        ("deepconf msgspec, 1 read/event", lambda: run_deepconf(events, window)),
        ("deepconf msgspec, 64 KiB reads", lambda: run_deepconf(reads, window)),
        ("deepconf backend over httpx", lambda: asyncio.run(run_backend(events, window))),
        ("orjson", lambda: run_parser(orjson.loads)(events, window)),
        ("json", lambda: run_parser(json.loads)(events, window)),
        ("openai SDK over httpx", lambda: asyncio.run(run_openai_sdk(events, window))),
    ]
    rows = []
    for name, fn in paths:
        seconds, sink = measure(fn, repeats)
        assert sink.tokens == n_tokens, f"{name} counted {sink.tokens} tokens, not {n_tokens}"
        rows.append(Row(name, per_chunk, n_tokens / seconds, float(sink.gw.lowest or 0.0)))
    ref = rows[0].lowest
    for r in rows:
        assert abs(r.lowest - ref) < 1e-9, f"{r.path} disagrees: lowest {r.lowest} vs {ref}"
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--per-chunk", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per path")
    args = ap.parse_args(argv)
    size = len(vllm_chat_stream(100, 1)) / 100
    print(
        f"{args.tokens} tokens, k={K}, window={args.window}, ~{size:.0f} bytes of SSE per token,"
        f" best of {args.repeats}, one core"
    )
    for per_chunk in args.per_chunk:
        rows = bench(args.tokens, per_chunk, args.window, args.repeats)
        sdk = rows[-1].tokens_per_s
        print(f"\n{per_chunk} token(s) per chunk")
        print(f"  {'path':34s} {'tokens/s':>12s} {'vs SDK':>8s}")
        for r in rows:
            print(f"  {r.path:34s} {r.tokens_per_s:12,.0f} {r.tokens_per_s / sdk:7.1f}x")


if __name__ == "__main__":
    main()
