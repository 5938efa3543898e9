"""What a server's streams and metrics show, recorded as they arrive, for `deepconf doctor`.

`ServerProbe` sends short streamed requests (chat or completions, top-k logprobs asked, usage
asked with ``stream_options.include_usage``) and records each as a `StreamSample`: the HTTP
status and content type, every token position's top logprobs as sent, the finish reason,
[DONE], usage and what went wrong. It never raises for what a server does wrong: reporting
that is the doctor's job, so a refusal, an HTML page, a cut or a stall is a field of the
sample. It also reads the running-request gauge of GET {root}/metrics (vLLM, SGLang and
`deepconf serve-model` expose one) to see whether closing a stream stops generation.

Not here: judging what was seen (deepconf/doctor.py) or printing it. Payloads are parsed
with the json module, tolerantly: the doctor reads a few hundred chunks, not a fleet's worth.

    async with ServerProbe("http://localhost:8000/v1", model="m", api="chat", k=20) as probe:
        sample = await probe.sample(probe.body(max_tokens=32, temperature=1.0, seed=7))
        sample.counts                                     # entries per token position
        gauge = await probe.gauge()                       # None: /metrics exposes none
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from deepconf.backends.sse import DONE
from deepconf.backends.sse_framing import SSEDecoder
from deepconf.errors import ConfigError, ConnectError, StreamError

# A prompt most models answer at some length; completions get a list to continue.
CHAT_PROMPT = "Count from 1 to 50, separated by commas."
COMPLETION_PROMPT = "1, 2, 3, 4, 5, 6,"

# Running-request gauges and generated-token counters, by server (Prometheus text format).
RUNNING_GAUGES = ("vllm:num_requests_running", "sglang:num_running_reqs")
GENERATED_COUNTERS = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")


@dataclass
class Position:
    """One generated token as the stream reported it."""

    token: str | None  # the sampled token's string, where the server names it
    top: list[tuple[str, float]]  # the top entries as sent: (token string, logprob)
    reasoning: bool = False  # it arrived in a reasoning delta (chat)


@dataclass
class StreamSample:
    """What one streamed request showed, good or bad."""

    status: int | None = None  # None: no HTTP answer at all (see error)
    content_type: str = ""
    body_excerpt: str = ""  # the start of a body that was not an event stream
    error: str | None = None  # why it ended badly: transport, timeout, in-stream error
    positions: list[Position] = field(default_factory=list)
    payloads: int = 0  # data events read, [DONE] excluded
    unreadable: int = 0  # data events that were not a JSON object
    done: bool = False  # data: [DONE] arrived
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    text_chunks: int = 0  # chunks carrying text or reasoning text
    bare_text_chunks: int = 0  # ... of which without any logprob entry
    reasoning_chunks: int = 0  # chunks carrying reasoning text (chat)
    bare_reasoning_chunks: int = 0  # ... of which without any logprob entry
    closed_early: bool = False  # the doctor closed it on purpose
    seconds: float = 0.0  # from sending the request to the end of the body

    @property
    def tokens(self) -> int:
        """Tokens counted from logprob entries (never from chunks: one may carry several)."""
        return len(self.positions)

    @property
    def received(self) -> int:
        """Tokens received by the larger count: logprob entries or chunks of text."""
        return max(self.tokens, self.text_chunks)

    @property
    def counts(self) -> list[int]:
        return [len(p.top) for p in self.positions]

    @property
    def is_event_stream(self) -> bool:
        return self.status == 200 and "text/event-stream" in self.content_type.lower()


@dataclass(frozen=True)
class Gauge:
    """A reading of the server's /metrics."""

    running: float  # requests running now
    generated: float | None  # tokens generated since start, where the server counts them
    name: str  # the metric the running count came from


class ServerProbe:
    """Short streamed requests to one OpenAI-compatible server; see the module docstring.

    `timeout` bounds every request from send to the end of its body, so a stalled stream
    (even one kept alive by comments) cannot hang the doctor.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None,
        api: Literal["chat", "completions"],
        k: int,
        api_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api = api
        self.k = k
        self.timeout = timeout
        self.extra: dict[str, Any] = {}  # fields every request carries (e.g. ignore_eos)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None

    @property
    def root(self) -> str:
        """The server root: the base URL without its /v1, where /metrics lives."""
        url = httpx.URL(self.base_url)
        path = url.path.rstrip("/")
        return str(url.copy_with(path=path.removesuffix("/v1"))).rstrip("/")

    async def __aenter__(self) -> ServerProbe:
        self._client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "use ServerProbe in `async with`"
        return self._client

    # --- the model ---------------------------------------------------------------------------

    async def discover_model(self) -> str:
        """The model to ask for: --model, else the first of GET /v1/models.

        Raises ConnectError when nothing answers there (the one error that stops the doctor
        before any check), ConfigError when the list names no model."""
        try:
            response = await self.client.get(self.base_url + "/models")
        except httpx.HTTPError as exc:
            raise ConnectError(
                f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}): start the server"
                " or fix --base-url (usually http://host:port/v1)"
            ) from exc
        if self.model:
            return self.model
        try:
            model = response.json()["data"][0]["id"]
        except (ValueError, LookupError, TypeError):
            model = None
        if not isinstance(model, str) or not model:
            raise ConfigError(
                f"{self.base_url}/models (HTTP {response.status_code}) names no model: pass --model"
            )
        self.model = model
        return model

    # --- streams -----------------------------------------------------------------------------

    def body(
        self, *, max_tokens: int, temperature: float, seed: int, **extra: Any
    ) -> dict[str, Any]:
        """A streamed request for k top logprobs per token, usage asked for."""
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": 1.0,
            "seed": seed,
            "stream_options": {"include_usage": True},
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": CHAT_PROMPT}]
            body["logprobs"] = True
            body["top_logprobs"] = self.k
        else:
            body["prompt"] = COMPLETION_PROMPT
            body["logprobs"] = self.k
        return body | self.extra | extra

    async def sample(
        self,
        body: dict[str, Any],
        *,
        close_after: int | None = None,
        while_open: Callable[[StreamSample], Awaitable[None]] | None = None,
    ) -> StreamSample:
        """Send one streamed request and record what came back.

        With `close_after`, the stream is closed once that many tokens arrived, after
        awaiting `while_open(sample)` (the doctor reads /metrics there)."""
        sample = StreamSample()
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                await self._read(body, sample, close_after, while_open)
        except TimeoutError:
            sample.error = f"no end within {self.timeout:g} s (a stalled stream?)"
        except httpx.HTTPError as exc:
            sample.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except StreamError as exc:
            sample.error = str(exc)
        sample.seconds = time.monotonic() - start
        return sample

    async def _read(
        self,
        body: dict[str, Any],
        sample: StreamSample,
        close_after: int | None,
        while_open: Callable[[StreamSample], Awaitable[None]] | None,
    ) -> None:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        # Leaving the `async with` closes the response: that is what tells a server to stop.
        async with self.client.stream("POST", self.base_url + path, json=body) as response:
            sample.status = response.status_code
            sample.content_type = response.headers.get("content-type", "")
            if not sample.is_event_stream:
                sample.body_excerpt = (await _read_some(response, 2048)).strip()[:300]
                return
            sse = SSEDecoder()
            async for raw in response.aiter_bytes():
                for payload in sse.feed(raw):
                    if _take(sample, payload):
                        return
                # text chunks count too: a stream whose logprobs stop must still be closed
                if close_after is not None and sample.received >= close_after:
                    if sample.finish_reason is None:
                        if while_open is not None:
                            await while_open(sample)
                        sample.closed_early = True
                    return
            for payload in sse.flush():
                if _take(sample, payload):
                    return

    # --- metrics -----------------------------------------------------------------------------

    async def gauge(self) -> Gauge | None:
        """The running-request gauge of GET {root}/metrics, or None where there is none."""
        try:
            response = await self.client.get(self.root + "/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return parse_metrics(response.text)


def parse_metrics(text: str) -> Gauge | None:
    """vLLM's and SGLang's Prometheus text, or serve-model's JSON counters, as a `Gauge`."""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):  # deepconf serve-model
        running, generated = obj.get("requests_running"), obj.get("tokens_generated")
        if isinstance(running, int | float):
            count = float(generated) if isinstance(generated, int | float) else None
            return Gauge(float(running), count, "requests_running")
        return None
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name, value = _metric_line(line)
        if name in RUNNING_GAUGES or name in GENERATED_COUNTERS:
            totals[name] = totals.get(name, 0.0) + value  # summed over label sets
    for running in RUNNING_GAUGES:
        if running in totals:
            prefix = running.split(":")[0]
            counter = next((c for c in GENERATED_COUNTERS if c.startswith(prefix)), "")
            return Gauge(totals[running], totals.get(counter), running)
    return None


def _metric_line(line: str) -> tuple[str, float]:
    """('name', value) of one Prometheus sample line; ('', nan) for anything else."""
    line = line.strip()
    if not line or line.startswith("#"):
        return "", math.nan
    name = line.split("{", 1)[0].split(None, 1)[0]
    try:
        value = float(line.rsplit("}", 1)[-1].split()[0] if "}" in line else line.split()[1])
    except (IndexError, ValueError):
        return "", math.nan
    return name, value


async def _read_some(response: httpx.Response, limit: int) -> str:
    data = b""
    async for raw in response.aiter_bytes():
        data += raw
        if len(data) >= limit:
            break
    return data[:limit].decode("utf-8", errors="replace")


# --- one payload -----------------------------------------------------------------------------


def _take(sample: StreamSample, payload: bytes) -> bool:
    """Record one data event; True when it ends the stream ([DONE] or an in-stream error)."""
    if payload.strip() == DONE:
        sample.done = True
        return True
    sample.payloads += 1
    try:
        chunk = json.loads(payload)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        sample.unreadable += 1
        return False
    if chunk.get("error"):
        err = chunk["error"]
        said = err.get("message", err) if isinstance(err, dict) else err
        sample.error = f"in-stream error: {said}"
        return True
    if isinstance(chunk.get("usage"), dict):
        sample.usage = chunk["usage"]
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict):
            _take_choice(sample, choice)
    return False


def _take_choice(sample: StreamSample, choice: dict[str, Any]) -> None:
    if choice.get("finish_reason"):
        sample.finish_reason = str(choice["finish_reason"])
    delta = choice.get("delta")
    delta = delta if isinstance(delta, dict) else {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    text = delta.get("content") or choice.get("text")
    is_reasoning = bool(reasoning) and not text
    before = sample.tokens
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        if isinstance(logprobs.get("content"), list):  # chat: one entry per token
            for entry in logprobs["content"]:
                if isinstance(entry, dict):
                    sample.positions.append(_chat_position(entry, is_reasoning))
        elif isinstance(logprobs.get("top_logprobs"), list):  # completions: parallel lists
            tokens = logprobs.get("tokens")
            tokens = tokens if isinstance(tokens, list) else []
            for i, top in enumerate(logprobs["top_logprobs"]):
                token = tokens[i] if i < len(tokens) and isinstance(tokens[i], str) else None
                entries = [(str(t), v) for t, v in top.items()] if isinstance(top, dict) else []
                sample.positions.append(Position(token, _numbers(entries)))
    bare = sample.tokens == before
    if text or reasoning:
        sample.text_chunks += 1
        sample.bare_text_chunks += bare
    if reasoning:
        sample.reasoning_chunks += 1
        sample.bare_reasoning_chunks += bare


def _chat_position(entry: dict[str, Any], reasoning: bool) -> Position:
    tops = entry.get("top_logprobs")
    pairs = [
        (str(t.get("token")), t.get("logprob"))
        for t in (tops if isinstance(tops, list) else [])
        if isinstance(t, dict)
    ]
    token = entry.get("token")
    return Position(token if isinstance(token, str) else None, _numbers(pairs), reasoning)


def _numbers(pairs: list[tuple[str, Any]]) -> list[tuple[str, float]]:
    """Entries whose value is a number (JSON null or a string is no logprob at all)."""
    return [
        (t, float(v)) for t, v in pairs if isinstance(v, int | float) and not isinstance(v, bool)
    ]
