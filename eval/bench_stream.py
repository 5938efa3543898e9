"""Benchmark: streaming throughput from raw SSE bytes to updated group confidence, one core.

The same vLLM-format chat stream (top-20 logprobs, ~1.8 KB of JSON per token; 1 token per
chunk, and several per chunk) goes through each parsing path, and each path does the same
confidence work after parsing: the (n, k) logprob matrix -> `token_confidence` ->
`GroupWindow.push_many`. Paths, side by side in one run:

    deepconf           SSEDecoder + decode_payloads (what the backend runs), one network
                       read per SSE event, and with 64 KiB reads (a backlogged stream)
    without C          the same with the C parts off (DEEPCONF_NO_C=1): Python and msgspec
    deepconf+httpx     the whole OpenAIHttpBackend stream over httpx.MockTransport
    orjson / json      the same framing, each payload parsed fully by orjson / json.loads
    openai SDK         openai.AsyncOpenAI streaming over httpx.MockTransport (pydantic chunks)

Every path must end at the same lowest group confidence; the run fails loudly otherwise.
`--long-lines` measures the SSE framing alone instead: single-event lines of 1, 16 and 32 MiB
in 16 and 64 KiB reads, and the vLLM stream, for `SSEDecoder` beside the old quadratic one.
`--end-to-end` measures whole processes instead: `deepconf solve` against a replay server
beside an openai SDK client, tokens per CPU-second (eval/bench_end_to_end.py).

    python -m deepconf.eval.bench_stream                   # 4000 tokens, k=20, window 2048
    python -m deepconf.eval.bench_stream --tokens 20000 --per-chunk 1 4
    python -m deepconf.eval.bench_stream --long-lines --line-mib 1 16 32 --read-kib 16 64
    python -m deepconf.eval.bench_stream --end-to-end --traces 128 --tokens 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import string
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
import numpy as np
import orjson

from deepconf.backend import TraceRequest
from deepconf.backends import sse, sse_framing
from deepconf.backends.openai_http import PROBE_TOKENS, HttpBackendConfig, OpenAIHttpBackend
from deepconf.backends.sse import decode_payloads
from deepconf.backends.sse_framing import SSEDecoder
from deepconf.confidence import GroupWindow, token_confidence
from deepconf.config import SamplingConfig

K = 20


def vllm_chat_stream(
    n_tokens: int, per_chunk: int, k: int = K, seed: int = 0, answer: str = ""
) -> bytes:
    """A vLLM /v1/chat/completions stream: role chunk, token chunks, usage, [DONE]; `answer`
    is appended to the last chunk's text (a final answer to vote on)."""
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
            "delta": {"content": "".join(c["token"] for c in content) + (answer if last else "")},
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

    def push(self, top_logprobs: np.ndarray, token_conf: np.ndarray | None = None) -> None:
        """As the controller does: the decoder's confidences where it computed them."""
        self.tokens += top_logprobs.shape[0]
        if token_conf is None:
            token_conf = token_confidence(top_logprobs)
        self.gw.push_many(token_conf)


# --- paths ------------------------------------------------------------------------------------


def run_deepconf(pieces: list[bytes], window: int) -> Sink:
    sink, sse = Sink(window), SSEDecoder()
    for piece in pieces:
        decoded = decode_payloads(sse.feed(piece), K)
        if decoded.top_logprobs.shape[0]:
            sink.push(decoded.top_logprobs, decoded.token_conf)
    return sink


def run_without_c(pieces: list[bytes], window: int) -> Sink:
    """`run_deepconf` with the C parts off, as DEEPCONF_NO_C=1 makes them: Python alone."""
    saved = sse._chunkscan, sse_framing._framing
    sse._chunkscan = sse_framing._framing = None
    try:
        return run_deepconf(pieces, window)
    finally:
        sse._chunkscan, sse_framing._framing = saved


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
                    sink.push(batch.top_logprobs, batch.token_conf)
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


# --- framing only, long lines (--long-lines) --------------------------------------------------


class OldQuadraticSSEDecoder:
    """THE OLD FRAMING, kept here only to measure against: `SSEDecoder.feed` as it was before
    it was made linear. It joined the incomplete line to every read (`buf + chunk`) and
    searched it all again, so one line arriving in many reads cost quadratic time."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            keep_cr = buf.endswith(b"\r")
            buf = buf[:-1] if keep_cr else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buf += b"\r"
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        out: list[bytes] = []
        data = self._data
        for line in buf[:end].split(b"\n"):
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        return out


class _Framer(Protocol):
    def feed(self, chunk: bytes, /) -> list[bytes]: ...


def framing_seconds(
    make: Callable[[], _Framer], pieces: list[bytes], n_events: int, repeats: int
) -> float:
    """Best time to frame `pieces`; a path already past 2 s stops repeating (the old one)."""
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        decoder = make()
        start = time.perf_counter()
        n = sum(len(decoder.feed(piece)) for piece in pieces)
        took = time.perf_counter() - start
        assert n == n_events, f"framed {n} events, not {n_events}"
        best, spent = min(best, took), spent + took
        if spent > 2.0:
            break
    return best


def bench_framing(line_mib: list[int], read_kib: list[int], repeats: int) -> None:
    """MB/s of the new and the old framing, side by side: long single-event lines in fixed-size
    reads, then the ordinary vLLM stream (many small events per read)."""
    limit = (max(line_mib) + 1) * 2**20  # above the longest line: measure, don't refuse
    paths: list[tuple[str, Callable[[], _Framer]]] = [
        ("new", lambda: SSEDecoder(max_event_bytes=limit)),
        ("old", OldQuadraticSSEDecoder),
    ]
    cases: list[tuple[str, str, bytes, list[bytes], int]] = []
    for mib in line_mib:
        body = b"data: " + b"x" * (mib * 2**20 - 8) + b"\n\n"  # one event of `mib` MiB
        for kib in read_kib:
            cases.append((f"{mib} MiB line", f"{kib} KiB", body, split_reads(body, kib * 1024), 1))
    body = vllm_chat_stream(4000, 1)
    n = len(split_events(body))
    cases.append(("vLLM stream", "1/event", body, split_events(body), n))
    cases.append(("vLLM stream", "64 KiB", body, split_reads(body), n))
    row = "  {:14s} {:>8s} {:>10s} {:>10s} {:>8s} {:>8s}"
    print(f"SSE framing only (feed), best of {repeats}, one core; old = the quadratic copy")
    print(row.format("input", "reads", "new MB/s", "old MB/s", "old s", "new/old"))
    for name, reads, body, pieces, n in cases:
        new, old = (framing_seconds(make, pieces, n, repeats) for _, make in paths)
        mb = len(body) / 1e6
        cells = f"{mb / new:,.0f}", f"{mb / old:,.1f}", f"{old:.2f}", f"{old / new:.1f}x"
        print(row.format(name, reads, *cells))


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
        ("deepconf, 1 read/event", lambda: run_deepconf(events, window)),
        ("deepconf, 64 KiB reads", lambda: run_deepconf(reads, window)),
        ("deepconf without C, 64 KiB reads", lambda: run_without_c(reads, window)),
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
    argv = sys.argv[1:] if argv is None else argv
    if "--end-to-end" in argv:  # its own flags (--traces, --concurrency, ...) and --help
        from deepconf.eval import bench_end_to_end

        bench_end_to_end.main([a for a in argv if a != "--end-to-end"])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--per-chunk", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per path")
    ap.add_argument("--long-lines", action="store_true", help="SSE framing alone, old vs new")
    ap.add_argument("--line-mib", type=int, nargs="+", default=[1, 16, 32])
    ap.add_argument("--read-kib", type=int, nargs="+", default=[16, 64])
    ap.add_argument(
        "--end-to-end",
        action="store_true",
        help="deepconf solve vs an openai SDK client as processes, tokens per CPU-second"
        " (--end-to-end --help lists its flags)",
    )
    args = ap.parse_args(argv)
    if args.long_lines:
        bench_framing(args.line_mib, args.read_kib, args.repeats)
        return
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
