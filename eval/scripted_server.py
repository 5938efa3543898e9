"""A real OpenAI-compatible streaming server on 127.0.0.1 that plays scripted token streams.

It speaks both formats (chat: a `top_logprobs` list per token; completions: a dict keyed by
token string, optionally k+1 entries), serves /v1/models, paces chunks so a prune lands
mid-stream, can fail on purpose (HTTP status for the next requests, a dropped connection, an
in-stream error, fewer logprobs than asked, none) and plays the faults real servers have
shown (a stream ended by [DONE] without a finish reason, as llama-cpp-python does to a
request when a newer one arrives; a clean close without [DONE]; "logprobs": null mid-stream;
out-of-range logprob values; a stall kept alive by SSE comments; a 200 HTML page; a line
that never ends; usage that disagrees with the tokens sent), and RECORDS every stream: how
many tokens it sent and whether the client went away first. That record is how tests prove
a prune really closes the connection; GET /metrics reports streams in progress the way
vLLM's gauge does. It lives in the package because the fault matrix script
(deepconf.eval.fault_matrix) and `deepconf doctor`'s tests run against it too.

A raw ASGI app under uvicorn in a daemon thread: no framework between the test and the
wire, and `receive()` reports `http.disconnect` the moment the client closes.

    script = Script.from_text("The answer is \\boxed{7}.", confident=True, delay=0.001)
    with ScriptedServer(default=script, by_seed={3: other}) as server:
        backend = OpenAIHttpBackend(HttpBackendConfig(base_urls=[server.base_url]))
        ...
        server.wait_for(lambda: server.streams[0].disconnected)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepconf.eval.loopback import LoopbackServer

MODEL = "scripted-model"
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass
class ScriptToken:
    """One generated token: its text and the top logprobs at its position, largest first.

    The sampled token is rank 1 (`top[0]`) unless the script says otherwise.
    """

    text: str
    top: list[float]
    reasoning: bool = False  # sent as delta.reasoning_content (chat)


# Peaked: rank 1 near certain, the rest far below, so confidence is high (~12 for k=20).
CONFIDENT = [-0.01, *(-12.0 - 0.1 * j for j in range(30))]
# Flat: every candidate about as likely, so confidence is low (~3).
UNCONFIDENT = [-2.5 - 0.05 * j for j in range(31)]


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens (words keep their leading space)."""
    return re.findall(r"\s*\S+|\s+", text)


@dataclass
class Script:
    """What the server sends for one request."""

    tokens: list[ScriptToken]
    tokens_per_chunk: int = 1
    delay: float = 0.0  # seconds between chunks (pacing)
    # None: the last chunk carries no finish reason (llama-cpp-python's interrupted stream)
    finish_reason: str | None = "stop"
    drop_after: int | None = None  # cut the connection after this many tokens
    error_after: int | None = None  # send an in-stream {"error": ...} after this many tokens
    max_logprobs: int | None = None  # send at most this many top logprobs (a server's cap)
    logprobs: bool = True  # False: never send logprobs (an API without them)
    append_sampled: bool = False  # llama.cpp style k+1 entries (see _chat_entry/_completion_entry)
    # --- faults a real server has shown (the fault matrix: python -m deepconf.eval.fault_matrix)
    end: str = "done"  # "done": usage + [DONE]; "close": the body just ends, no [DONE]
    null_logprobs_after: int | None = None  # chunks past this many tokens: "logprobs": null
    stall_after: int | None = None  # after this many tokens send nothing more (keep it open)
    keepalive: float | None = None  # while stalled, an SSE comment every this many seconds
    html: bool = False  # answer 200 with an HTML error page instead of an event stream
    no_newline_bytes: int | None = None  # send this many bytes of one line that never ends
    usage_tokens: int | None = None  # completion_tokens the usage chunk claims (a mismatch)
    # --- logprob semantics a real server may have (what `deepconf doctor` tells apart)
    # "processed": top logprobs after the request's temperature (SGLang's default, vLLM's
    # processed_logprobs), renormalised over the script's entries; "raw": as scripted.
    logprob_mode: str = "raw"
    collide_every: int | None = None  # every Nth token one entry fewer (equal token strings)
    placeholder: float | None = None  # every logprob sent is this (0.0 or -9999.0: fake ones)
    status: int | None = None  # answer this HTTP status (with Retry-After: 0), not a stream

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        confident: bool = True,
        reasoning: str = "",
        top: list[float] | None = None,
        **kw: Any,
    ) -> Script:
        """A script that says `reasoning` (as reasoning tokens) then `text`, uniformly
        confident or unconfident."""
        lps = top or (CONFIDENT if confident else UNCONFIDENT)
        tokens = [ScriptToken(t, list(lps), True) for t in tokenize(reasoning)]
        tokens += [ScriptToken(t, list(lps)) for t in tokenize(text)]
        return cls(tokens, **kw)


@dataclass
class StreamRecord:
    """What happened to one streamed request, as the server saw it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    tokens_total: int  # tokens the script would send (after max_tokens)
    tokens_sent: int = 0
    finished: bool = False  # sent everything and [DONE]
    disconnected: bool = False  # the client went away before the end
    dropped: bool = False  # the server cut the connection on purpose
    client: tuple[str, int] = ("", 0)  # the client's address: one per connection

    @property
    def seed(self) -> int | None:
        return self.body.get("seed")


class ScriptedServer(LoopbackServer):
    """Start with `start()` or `with`; `base_url` ends in /v1.

    Script choice per streamed request, first match wins: `by_seed[body["seed"]]`, then
    `choose(request_number, body)` (returning None passes; request_number counts the
    streamed requests, 0-based, leaving out /v1/models and `fail_next` answers), then
    `default`. Requests without
    a seed (the backend's capability probe) thus get `default` unless `choose` says otherwise.
    `max_tokens` is honoured: a longer script is cut and finishes with "length".
    """

    def __init__(
        self,
        default: Script | None = None,
        *,
        by_seed: dict[int, Script] | None = None,
        choose: Callable[[int, dict[str, Any]], Script | None] | None = None,
        model: str = MODEL,
        interrupt_when_busy: bool = False,
        ignore_disconnect: bool = False,
    ) -> None:
        self.default = default or Script.from_text("Hello there, friend.")
        self.by_seed = dict(by_seed or {})
        self.choose = choose
        self.model = model
        # llama-cpp-python's default: a stream ends early whenever a newer request arrives
        self.interrupt_when_busy = interrupt_when_busy
        # a server whose generation outlives its client (llama.cpp #11720, vLLM #54947): after
        # a disconnect it keeps "generating" the rest at the script's pace, and /metrics counts it
        self.ignore_disconnect = ignore_disconnect
        self.running = 0  # streams in progress: GET /metrics reports it as vLLM does
        self.generated = 0  # tokens generated, read or not: vLLM's generation_tokens_total
        super().__init__(self._app, lifespan="off", backlog=4096, interface="asgi3")
        self.requests: list[dict[str, Any]] = []  # every request: path, headers, body, status
        self.streams: list[StreamRecord] = []
        self._failures: list[tuple[int, float | None, str]] = []
        self._served = 0  # streamed requests so far: `choose` gets this as request_number
        self._lock = threading.Lock()

    # --- control -----------------------------------------------------------------------------

    def fail_next(
        self, status: int, *, retry_after: float | None = None, message: str = ""
    ) -> None:
        """The next streamed request gets this HTTP status instead of a stream."""
        with self._lock:
            self._failures.append((status, retry_after, message or f"scripted failure {status}"))

    def clear_failures(self) -> int:
        """Drop the queued `fail_next` failures; returns how many were left unused."""
        with self._lock:
            left, self._failures = len(self._failures), []
        return left

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll until `predicate()` holds (the server runs in another thread); False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    # --- ASGI --------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = json.loads(raw) if raw else {}
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
            failure = self._failures.pop(0) if self._failures and path != "/v1/models" else None
        if path == "/metrics":
            label = f'{{model_name="{self.model}"}}'
            text = (
                f"vllm:num_requests_running{label} {self.running}\n"
                f"vllm:generation_tokens_total{label} {self.generated}\n"
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")],
                }
            )
            return await send({"type": "http.response.body", "body": text.encode()})
        if path == "/v1/models" and scope["method"] == "GET":
            return await _json(send, 200, {"object": "list", "data": [{"id": self.model}]})
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return await _json(send, 404, {"error": {"message": f"no route {path}"}})
        if scope["method"] != "POST":  # as vLLM: the generation routes take POST only
            return await _json(send, 405, {"error": {"message": "Method Not Allowed"}})
        if failure is not None:
            status, retry_after, message = failure
            extra = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
            return await _json(send, status, {"error": {"message": message}}, extra)
        chat = path == "/v1/chat/completions"
        if (chat and "messages" not in body) or (not chat and "prompt" not in body):
            return await _json(send, 400, {"error": {"message": "messages or prompt missing"}})
        with self._lock:
            number, self._served = self._served, self._served + 1
        script = self._script(number, body)
        if script.status is not None:
            said = {"error": {"message": f"scripted status {script.status}"}}
            return await _json(send, script.status, said, [(b"retry-after", b"0")])
        client = tuple(scope.get("client") or ("", 0))
        await self._stream(send, receive, script, body, headers, path, chat, client)

    def _script(self, number: int, body: dict[str, Any]) -> Script:
        seed = body.get("seed")
        if seed is not None and seed in self.by_seed:
            return self.by_seed[seed]
        if self.choose is not None:
            chosen = self.choose(number, body)
            if chosen is not None:
                return chosen
        return self.default

    async def _stream(
        self,
        send: Any,
        receive: Any,
        script: Script,
        body: dict[str, Any],
        headers: dict[str, str],
        path: str,
        chat: bool,
        client: tuple[str, int],
    ) -> None:
        max_tokens = int(body.get("max_tokens") or len(script.tokens))
        tokens = _as_served(script, script.tokens[:max_tokens], body)
        finish = script.finish_reason if len(script.tokens) <= max_tokens else "length"
        rec = StreamRecord(path, body, headers, len(tokens), client=client)
        with self._lock:
            self.streams.append(rec)
            self.running += 1
            number = len(self.streams)
        k = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        wants = (body.get("logprobs") is True if chat else k > 0) and script.logprobs
        if script.max_logprobs is not None:
            k = min(k, script.max_logprobs)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        def interrupted() -> bool:
            # llama-cpp-python (interrupt_requests=True): a newer request ends this one.
            return self.interrupt_when_busy and len(self.streams) > number

        watcher = asyncio.create_task(watch())
        try:
            if script.html:
                page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/html")],
                    }
                )
                await send({"type": "http.response.body", "body": page})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            if script.no_newline_bytes is not None:
                await self._endless_line(send, script.no_newline_bytes)
                return
            if chat:
                await _event(send, _chunk(chat, self.model, [], k, False, None, script, role=True))
            sent = 0
            while sent < len(tokens):
                if gone.is_set():
                    rec.disconnected = True
                    if self.ignore_disconnect:
                        for _ in range(len(tokens) - sent):  # on to the end, unread
                            await asyncio.sleep(script.delay)
                            self.generated += 1
                    return
                if sent == script.stall_after:
                    await self._stall(send, gone, script.keepalive)
                    rec.disconnected = True
                    return
                if interrupted():
                    # What llama-cpp-python sends: [DONE], no finish reason, no usage.
                    await send(
                        {"type": "http.response.body", "body": DONE_EVENT, "more_body": False}
                    )
                    return
                # a chunk never runs past a scripted drop, error or stall point
                stops = [
                    x
                    for x in (script.drop_after, script.error_after, script.stall_after)
                    if x and x > sent
                ]
                limit = min([len(tokens), *stops])
                group = tokens[sent : min(sent + script.tokens_per_chunk, limit)]
                last = sent + len(group) == len(tokens)
                null = script.null_logprobs_after is not None and sent >= script.null_logprobs_after
                chunk = _chunk(
                    chat, self.model, group, k, wants and not null, finish if last else None, script
                )
                if script.collide_every:
                    _collide(chunk, sent, script.collide_every)
                await _event(send, chunk)
                sent += len(group)
                rec.tokens_sent = sent
                self.generated += len(group)
                if sent == script.drop_after:
                    rec.dropped = True
                    raise ConnectionAbortedError("scripted mid-stream drop")  # uvicorn cuts
                if sent == script.error_after:
                    await _event(
                        send,
                        {
                            "error": {
                                "message": "scripted in-stream error",
                                "type": "InternalServerError",
                                "code": 500,
                            }
                        },
                    )
                    break
                if script.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), script.delay)
            if gone.is_set():
                rec.disconnected = True
                return
            if script.end == "close":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            completion = sent if script.usage_tokens is None else script.usage_tokens
            usage = {"prompt_tokens": 5, "completion_tokens": completion}
            usage["total_tokens"] = 5 + completion
            await _event(send, {"id": "x", "object": "chunk", "choices": [], "usage": usage})
            await send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
            rec.finished = script.error_after is None and finish is not None
        finally:
            watcher.cancel()
            with self._lock:
                self.running -= 1

    async def _stall(self, send: Any, gone: asyncio.Event, keepalive: float | None) -> None:
        """Send nothing more but keep the connection open (only keep-alive comments, if
        asked) until the client goes away."""
        while not gone.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), keepalive or 3600.0)
            if keepalive is not None and not gone.is_set():
                await send(
                    {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                )

    async def _endless_line(self, send: Any, size: int) -> None:
        """`size` bytes of one `data:` line that never ends, in 64 KiB writes, then close."""
        piece = b"x" * 65536
        await send({"type": "http.response.body", "body": b"data: ", "more_body": True})
        left = size
        while left > 0:
            await send({"type": "http.response.body", "body": piece[:left], "more_body": True})
            left -= len(piece)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Any, status: int, obj: Any, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _event(send: Any, obj: dict[str, Any]) -> None:
    data = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _chat_entry(tok: ScriptToken, k: int, script: Script) -> dict[str, Any]:
    """vLLM shape: exactly k entries, sampled first; llama.cpp appends the sampled again."""
    tops = [
        {
            "token": tok.text if j == 0 else f"<alt{j}>",
            "logprob": v,
            "bytes": list((tok.text if j == 0 else f"<alt{j}>").encode()),
        }
        for j, v in enumerate(tok.top[:k])
    ]
    if script.append_sampled and tops:
        tops.append(dict(tops[0]))
    return {
        "token": tok.text,
        "logprob": tok.top[0],
        "bytes": list(tok.text.encode()),
        "top_logprobs": tops,
    }


def _completion_entry(tok: ScriptToken, k: int, script: Script) -> dict[str, float]:
    """A dict keyed by token string; with append_sampled the sampled token ranks below the
    top k, so the dict holds k+1 entries (vLLM's legacy format)."""
    if script.append_sampled:
        entry = {f"<alt{j}>": v for j, v in enumerate(tok.top[:k])}
        entry[tok.text] = min(tok.top) - 1.0
        return entry
    return {(tok.text if j == 0 else f"<alt{j}>"): v for j, v in enumerate(tok.top[:k])}


def _as_served(
    script: Script, tokens: list[ScriptToken], body: dict[str, Any]
) -> list[ScriptToken]:
    """The tokens with their logprobs as this request sees them: placeholders, or after the
    request's temperature (log-softmax of logprob / T over the scripted entries)."""
    if script.placeholder is not None:
        return [ScriptToken(t.text, [script.placeholder] * len(t.top), t.reasoning) for t in tokens]
    if script.logprob_mode != "processed":
        return tokens
    temperature = float(body.get("temperature") or 1.0)  # 0 (greedy) taken as 1
    out = []
    for t in tokens:
        scaled = [v / temperature for v in t.top]
        peak = max(scaled)
        norm = peak + math.log(sum(math.exp(v - peak) for v in scaled))
        out.append(ScriptToken(t.text, [v - norm for v in scaled], t.reasoning))
    return out


def _collide(chunk: dict[str, Any], first: int, every: int) -> None:
    """At every `every`-th token position two alternatives decode to the same string, so the
    position arrives with one entry fewer (llama.cpp drops it in chat lists and completions
    dicts alike)."""
    logprobs = chunk["choices"][0]["logprobs"]
    if not logprobs:
        return
    entries = logprobs["content"] if "content" in logprobs else logprobs["top_logprobs"]
    for i, entry in enumerate(entries):
        if (first + i) % every:
            continue
        if isinstance(entry, dict) and "top_logprobs" in entry:  # chat: a list, sampled first
            entry["top_logprobs"] = entry["top_logprobs"][:-1]
        else:  # completions: a dict keyed by token string; drop the last alternative
            alts = [key for key in entry if key.startswith("<alt")]
            if alts:
                del entry[alts[-1]]


def _chunk(
    chat: bool,
    model: str,
    group: list[ScriptToken],
    k: int,
    wants: bool,
    finish: str | None,
    script: Script,
    role: bool = False,
) -> dict[str, Any]:
    head = {"id": "cmpl-scripted", "created": 0, "model": model}
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        reasoning = "".join(t.text for t in group if t.reasoning)
        content = "".join(t.text for t in group if not t.reasoning)
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        logprobs = (
            {"content": [_chat_entry(t, k, script) for t in group]} if wants and group else None
        )
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}
    logprobs = None
    if wants and group:
        logprobs = {
            "text_offset": [0] * len(group),
            "token_logprobs": [t.top[0] for t in group],
            "tokens": [t.text for t in group],
            "top_logprobs": [_completion_entry(t, k, script) for t in group],
        }
    choice = {
        "index": 0,
        "text": "".join(t.text for t in group),
        "logprobs": logprobs,
        "finish_reason": finish,
        "stop_reason": None,
    }
    return {**head, "object": "text_completion", "choices": [choice], "usage": None}


__all__ = [
    "CONFIDENT",
    "MODEL",
    "UNCONFIDENT",
    "Script",
    "ScriptToken",
    "ScriptedServer",
    "StreamRecord",
    "tokenize",
]
