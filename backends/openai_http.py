"""The OpenAI-compatible HTTP backend: one streamed request per trace (n=1) with top-k logprobs.

Works with vLLM, SGLang, llama.cpp's server and hosted APIs, over /v1/chat/completions or
/v1/completions. Each trace is its own request, so closing its stream (a prune) aborts just
that generation: the generator's `finally` closes the response, the server sees the
disconnect. Retries (connect errors, 429 with Retry-After, 5xx) happen only before the first
token arrived; a stream that breaks later raises `StreamError` and the controller replaces
the trace. httpx exceptions never leave this module: `HttpErrors` (backends/http_errors.py)
translates them. Every trace's stream is audited (backends/stream_audit.py): it counts only
what arrived with a finish reason and logprobs; deadlines measure progress (time since the
last token), not bytes.

What it does not do: parse bytes (backends/sse_framing.py, backends/sse.py), pick endpoints
(backends/routing.py) or judge a server's logprobs before the first trace
(backends/logprob_probe.py).

    backend = OpenAIHttpBackend(HttpBackendConfig(base_urls=["http://localhost:8000/v1"]))
    await backend.open()                                  # discovers the model, probes logprobs
    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for batch in stream: ...
    await backend.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import httpx
import msgspec
from asyncio_throttle import Throttler
from pydantic import Field, field_validator, model_validator

from deepconf.backend import Prompt, TokenBatch, TraceRequest
from deepconf.backends.h1_transport import default_transport, push_body
from deepconf.backends.http_errors import (
    NOT_STREAMS,
    HttpErrors,
    media_type,
    not_a_stream,
    status_error,
)
from deepconf.backends.logprob_probe import PROBE_TOKENS as PROBE_TOKENS
from deepconf.backends.logprob_probe import probe_logprobs
from deepconf.backends.response_reader import ConsumerRaised, ReadTiming, ResponseReader
from deepconf.backends.routing import (
    EJECT_AFTER,
    EndpointPool,
    retry_delay,
    split_weight,
)
from deepconf.backends.sse_framing import DEFAULT_MAX_EVENT_BYTES
from deepconf.backends.stream_audit import StreamAudit
from deepconf.config import StrictModel
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConfigError,
    ConnectError,
    RateLimitedError,
    ServerError,
    StreamError,
)

log = logging.getLogger(__name__)

# k open() probes for when the config names none: the paper's k.
DEFAULT_PROBE_K = 20
# /models answers meaning the server has no such route (a proxy, a minimal server): the
# model name must then be given. Any other refusal (a bad key, a 5xx) is reported as is.
NO_MODELS_ROUTE = frozenset({404, 405, 501})


class HttpBackendConfig(StrictModel):
    """How to reach one or more OpenAI-compatible servers."""

    base_urls: list[str] = Field(
        min_length=1,
        description="Server base URLs, e.g. http://localhost:8000/v1; URL#3 gives one a"
        " weight (moved to `weights`).",
    )
    weights: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None,
        description="Relative share of the traces per base URL, in their order (3 and 1:"
        " three times the streams in flight on the first); None: all equal.",
    )
    model: str | None = Field(None, description="Model name; None: the first of GET /v1/models.")
    api: Literal["chat", "completions"] = Field("chat", description="Endpoint family to call.")
    api_key: str | None = Field(None, description="Bearer token; None: $OPENAI_API_KEY.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    token_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a stream may go without a new token before its trace fails (SSE"
        " comments and keep-alive events do not count); the first token's wait counts from"
        " the response headers.",
    )
    trace_timeout: float | None = Field(
        None, gt=0, description="Wall-clock seconds one trace may take; None: no limit."
    )
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES,
        ge=1024,
        description="Largest SSE event accepted; a larger one fails the trace.",
    )
    probe: bool = Field(
        True,
        description="Check k top logprobs with a short request at open(); False: judge k on"
        " the first positions of the first traces instead.",
    )
    max_retries: int = Field(4, ge=0, description="Retries before a trace's first token.")
    requests_per_second: float | None = Field(
        None, gt=0, description="Cap on new requests per second (hosted APIs' rate limits)."
    )
    max_connections: int = Field(4096, ge=1, description="HTTP connection pool size.")
    top_logprobs: int | None = Field(
        None,
        ge=1,
        le=100,
        description="k that open() must confirm (else it raises). None: open() probes for 20"
        " and each trace's k is checked against what came back before it is sent.",
    )
    backoff_base: float = Field(0.5, ge=0, description="First retry delay in seconds.")
    backoff_cap: float = Field(30.0, ge=0, description="Longest retry delay in seconds.")

    @model_validator(mode="before")
    @classmethod
    def _weights_from_urls(cls, data: Any) -> Any:
        """Move `URL#weight` suffixes into `weights`. A bad suffix is left in place for
        `_normalise` to report under base_urls, the setting the user wrote it in."""
        urls = data.get("base_urls") if isinstance(data, dict) else None
        if not isinstance(urls, list) or not any(isinstance(u, str) and "#" in u for u in urls):
            return data
        try:
            pairs = [split_weight(u.strip()) for u in urls]
        except (ValueError, AttributeError):
            return data
        if data.get("weights") is not None:
            raise ValueError("weights given twice (URL#weight and weights=): use one")
        return data | {"base_urls": [u for u, _ in pairs], "weights": [w for _, w in pairs]}

    @field_validator("base_urls")
    @classmethod
    def _normalise(cls, urls: list[str]) -> list[str]:
        out = []
        for url in urls:
            url = split_weight(url.strip())[0].rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base URL {url!r} must start with http:// or https://")
            # A bare host gets the OpenAI prefix; any other path (a proxy's) is kept as given.
            if httpx.URL(url).path in ("", "/"):
                url += "/v1"
            if url in out:
                raise ValueError(
                    f"base URL {url!r} is given twice: give each server once (URL#3 sends it"
                    " three times the traces)"
                )
            out.append(url)
        return out

    @model_validator(mode="after")
    def _one_weight_per_url(self) -> HttpBackendConfig:
        if self.weights is not None and len(self.weights) != len(self.base_urls):
            raise ValueError(
                f"{len(self.weights)} weights for {len(self.base_urls)} base URLs: give one"
                " per URL, in the same order"
            )
        return self


class OpenAIHttpBackend:
    """Streams traces from OpenAI-compatible servers; see the module docstring."""

    def __init__(
        self, config: HttpBackendConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport  # injected in benchmarks (httpx.MockTransport); None: network
        self.model: str = config.model or ""
        self._pool = EndpointPool(config.base_urls, weights=config.weights)
        self._client: httpx.AsyncClient | None = None
        self._throttler: Throttler | None = None
        self._ok_k = 0  # the largest k a probe (or a stream) confirmed at its fullest position
        self._unverified_k = 0  # k let through unprobed (--no-probe, or a silent model)
        self._warned: set[str] = set()  # servers whose first retry was logged
        self._cap: int | None = None  # the k a probe found the server stops at, when short
        self._lock: asyncio.Lock | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is not None:
                return
            self._client = self._new_client()
            cfg = self.config
            if cfg.requests_per_second is not None:
                # Throttler takes an integer count per period: express fractional rates as
                # one request per 1/rps seconds.
                rate = max(1, int(cfg.requests_per_second))
                self._throttler = Throttler(rate_limit=rate, period=rate / cfg.requests_per_second)
            try:
                if not self.model:
                    self.model = await self._discover_model()
                k = cfg.top_logprobs or DEFAULT_PROBE_K
                try:
                    await self._check_k(k)
                except CapabilityError:
                    if cfg.top_logprobs is not None or self._cap is None:
                        raise  # k was asked for, or no usable logprobs at all
                    # Nobody asked for 20 yet: traces asking for at most what came back run;
                    # one asking for more fails at once with the same message.
                    log.warning("%s", self._short_error(k))
            except BaseException:
                await self.aclose()
                raise

    def _new_client(self) -> httpx.AsyncClient:
        cfg = self.config
        api_key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
        limits = httpx.Limits(
            max_connections=cfg.max_connections,
            max_keepalive_connections=cfg.max_connections,
        )
        return httpx.AsyncClient(
            # The lean HTTP/1.1 transport for plain http (backends/h1_transport.py).
            transport=self._transport or default_transport(limits),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            # pool=None: with more traces than connections, wait for one, never fail.
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout, read=cfg.token_timeout, write=60.0, pool=None
            ),
            limits=limits,  # httpx's own transport, where it is used (proxies)
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._ok_k, self._unverified_k, self._cap = 0, 0, None
        for line in self._pool.summary():
            log.warning("%s", line)
        if client is not None:
            await client.aclose()

    async def _discover_model(self) -> str:
        assert self._client is not None
        errors = []
        refused: list[BackendError] = []  # no answer, or one a model name would not change
        for url in self.config.base_urls:
            try:
                with HttpErrors(url):
                    response = await self._client.get(url + "/models")
            except BackendError as exc:
                errors.append(str(exc))
                refused.append(exc)
                continue
            if response.status_code != 200:
                error = status_error(response, url)
                errors.append(str(error))
                if response.status_code not in NO_MODELS_ROUTE:
                    refused.append(error)  # a bad key (401), a broken server (5xx), ...
                continue
            try:
                model = response.json()["data"][0]["id"]
            except (ValueError, LookupError, TypeError):
                model = None  # not JSON, not the OpenAI list shape, or an empty list
            if isinstance(model, str) and model:
                return model
            errors.append(f"{url}/models lists no model: {response.text[:200]!r}")
        if len(refused) == len(errors):
            # Every server was unreachable or refused: naming the model would not help.
            if len(refused) == 1:
                raise refused[0]
            if all(isinstance(e, ConnectError) for e in refused):
                raise ConnectError("no base URL answered: " + "; ".join(errors))
            raise ConfigError("no base URL gave a model: " + "; ".join(errors))
        raise ConfigError(
            "could not discover the model name (" + "; ".join(errors) + "): pass --model"
            " (model= in HttpBackendConfig)"
        )

    # --- capability probe --------------------------------------------------------------------

    async def _ensure_k(self, k: int) -> None:
        """Make sure the server returns k logprobs per token, probing once per larger k."""
        if k <= self._ok_k:
            return
        assert self._lock is not None
        async with self._lock:
            await self._check_k(k)

    async def _check_k(self, k: int) -> None:
        if k <= self._ok_k or k <= self._unverified_k:
            return
        if self._cap is not None and k > self._cap:
            raise self._short_error(k)  # known short: no request needed
        if not self.config.probe:
            self._unverified_k = k  # --no-probe: the first traces judge k (StreamAudit)
            return
        served = await probe_logprobs(self._stream, self.config.api, k, self._where)
        if served is None:
            self._unverified_k = k  # the model wrote nothing: the first traces judge k
            return
        # A server that returned m logprobs at its fullest position can serve any k <= m.
        self._ok_k = max(self._ok_k, min(served, k))
        if served < k:
            self._cap = served
            raise self._short_error(k)

    def _short_error(self, k: int) -> CapabilityError:
        return CapabilityError(
            f"{self._where} returned {self._cap} top logprobs per token, fewer than the {k}"
            f" asked: on vLLM start the server with --max-logprobs {k} (its default is 20),"
            f" or lower --top-logprobs to {self._cap}"
        )

    @property
    def _where(self) -> str:
        return f"{self.config.base_urls[0]} ({self.model}, {self._path})"

    # --- streaming ---------------------------------------------------------------------------

    @property
    def _path(self) -> str:
        return "/chat/completions" if self.config.api == "chat" else "/completions"

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        """Token batches of one trace; closing the generator closes the HTTP response."""
        if self._client is None:
            await self.open()
        await self._ensure_k(request.top_logprobs)
        async with contextlib.aclosing(self._stream(request)) as stream:
            async for batch in stream:
                yield batch

    async def push(self, request: TraceRequest, consume: Callable[[TokenBatch], bool]) -> None:
        """`stream()` turned around (the controller's way, deepconf/backend.py `deliver`):
        each batch goes to `consume(batch)` as its bytes arrive, from the transport's read
        callback, with no task step per read (backends/response_reader.py); `consume`
        returns True to stop the trace now (a prune), which closes the response. Retries,
        errors and the audit are `stream()`'s; what `consume` raises comes out unchanged."""
        if self._client is None:
            await self.open()
        await self._ensure_k(request.top_logprobs)
        body = msgspec.json.encode(self._body(request))
        timing, avoid = self._timing(), None
        for attempt in range(self.config.max_retries + 1):
            url = self._pool.acquire(avoid)
            response: httpx.Response | None = None
            reader = self._reader(url, request, timing)
            try:
                response = await self._send(url, body)
                target = push_body(response)
                if target is not None:
                    stopped = await reader.push(response, target, consume)
                else:  # another transport, or an encoded body: pull, and hand on
                    stopped = False
                    async with contextlib.aclosing(reader.pull(response)) as reads:
                        async for batch in reads:
                            if stopped := consume(batch):
                                break
                if not stopped:
                    reader.end(busy=self._pool.busy > 1)
                return
            except ConsumerRaised as raised:
                raise raised.error from None
            except BackendError as exc:
                delay = self._retry_or_raise(exc, url, reader.delivered, attempt, timing, request)
                avoid = url
            finally:
                await self._let_go(response, url)
            await asyncio.sleep(delay)

    async def _stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        body = msgspec.json.encode(self._body(request))
        timing, avoid = self._timing(), None
        for attempt in range(self.config.max_retries + 1):
            url = self._pool.acquire(avoid)
            response: httpx.Response | None = None
            reader = self._reader(url, request, timing)
            try:
                response = await self._send(url, body)
                async with contextlib.aclosing(reader.pull(response)) as reads:
                    async for batch in reads:
                        yield batch
                # The pool counts this stream too: busy means others were in flight beside it.
                reader.end(busy=self._pool.busy > 1)
                return
            except BackendError as exc:
                delay = self._retry_or_raise(exc, url, reader.delivered, attempt, timing, request)
                avoid = url
            finally:
                await self._let_go(response, url)
            await asyncio.sleep(delay)

    async def _let_go(self, response: httpx.Response | None, url: str) -> None:
        """The end of one attempt, however it ended."""
        # Closing the response is what tells the server to stop generating (a prune).
        if response is not None:
            await response.aclose()
        self._pool.release(url)

    def _timing(self) -> ReadTiming:
        cfg = self.config
        limit = cfg.trace_timeout
        loop = asyncio.get_running_loop()
        return ReadTiming(
            deadline=loop.time() + limit if limit is not None else math.inf,
            token_timeout=cfg.token_timeout,
            trace_timeout=limit,
            max_event_bytes=cfg.max_event_bytes,
        )

    def _reader(self, url: str, request: TraceRequest, timing: ReadTiming) -> ResponseReader:
        # The probe judges what it got itself; a trace must pass the integrity rules.
        audit = None
        k = request.top_logprobs
        if request.index >= 0:
            audit = StreamAudit(url, k, verify_k=k > self._ok_k)
        return ResponseReader(
            url, k, timing, audit, self._confirmed, lambda: self._pool.succeeded(url)
        )

    def _confirmed(self, k: int) -> None:
        if k > self._ok_k:
            self._ok_k = k  # the stream confirmed what no probe could

    def _retry_or_raise(
        self,
        exc: BackendError,
        url: str,
        started: bool,
        attempt: int,
        timing: ReadTiming,
        request: TraceRequest,
    ) -> float:
        """The delay before the next attempt after `exc`; raises when there is none: the
        trace had its first token (a StreamError), the error is not retryable, the retries
        are spent, or the wait would pass the trace's deadline."""
        cfg = self.config
        if started:
            if isinstance(exc, StreamError | CapabilityError):
                raise exc
            raise StreamError(f"the stream from {url} broke mid-trace: {exc}") from exc
        self._count_failure(url, exc)
        if not exc.retryable or attempt == cfg.max_retries:
            raise exc
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        delay = retry_delay(attempt, retry_after, base=cfg.backoff_base, cap=cfg.backoff_cap)
        if asyncio.get_running_loop().time() + delay > timing.deadline:
            raise exc
        # One line per server, the first time; the rest go to the summary at aclose().
        level = logging.DEBUG if url in self._warned else logging.WARNING
        self._warned.add(url)
        who = "the probe" if request.index < 0 else f"trace {request.index}"
        log.log(level, "retrying %s in %.2fs: %s", who, delay, exc)
        return delay

    def _count_failure(self, url: str, exc: BackendError) -> None:
        """Feed the endpoint's health: connect errors and 5xx say it is unwell."""
        if isinstance(exc, RateLimitedError):
            self._pool.failed(url, "rate limited (429)", ejects=False)
            return
        if not isinstance(exc, ConnectError | ServerError):
            return
        kind = "connect error" if isinstance(exc, ConnectError) else "server error (5xx)"
        cooldown = self._pool.failed(url, kind, ejects=True)
        if cooldown is not None and len(self._pool.urls) > 1:
            log.warning(
                "%s left the rotation after %d failures in a row (%s); a trace probes it"
                " again in %.0fs",
                url,
                EJECT_AFTER,
                exc,
                cooldown,
            )

    async def _send(self, url: str, body: bytes) -> httpx.Response:
        """POST the request; return the open streaming response or raise the mapped error."""
        assert self._client is not None, "call open() first"
        request = self._client.build_request(
            "POST", url + self._path, content=body, headers={"Content-Type": "application/json"}
        )
        if self._throttler is not None:
            async with self._throttler:
                pass  # the throttler paces the start of requests, not their duration
        with HttpErrors(url):
            response = await self._client.send(request, stream=True)
            if response.status_code == 200 and media_type(response) not in NOT_STREAMS:
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
        if response.status_code != 200:
            raise status_error(response, url)
        raise not_a_stream(response, url)

    # --- request body ------------------------------------------------------------------------

    def _body(self, request: TraceRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "n": 1,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream_options": {"include_usage": True},
        }
        if s.top_k is not None:
            body["top_k"] = s.top_k  # vLLM/SGLang/llama.cpp extension
        if s.stop:
            body["stop"] = list(s.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if self.config.api == "chat":
            body["messages"] = _messages(request.prompt, s.system)
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        else:
            body["prompt"] = _raw_prompt(request.prompt, s.system)
            body["logprobs"] = request.top_logprobs
        return body


def _messages(prompt: Prompt, system: str | None) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ConfigError(f"chat messages need a 'role' and 'content', got {m!r}")
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _raw_prompt(prompt: Prompt, system: str | None) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(
            "the completions API takes a raw prompt string, not chat messages: use --api chat,"
            " or pass a prompt already rendered with the model's chat template"
        )
    if system is not None:
        raise ConfigError(
            "a system prompt needs --api chat; with --api completions put it in the raw prompt"
        )
    return prompt
