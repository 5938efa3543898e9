"""`deepconf serve-model`: the bundled engine behind an OpenAI-compatible HTTP API.

Endpoints: GET /v1/models, POST /v1/completions and /v1/chat/completions (streaming as SSE
``data:`` lines ending in ``data: [DONE]``, or one JSON body), GET /metrics and /health
(counters: requests running, aborted, tokens generated). Every request becomes one engine
request, so concurrent requests are decoded together by continuous batching. Logprobs come in
vLLM's shapes (reference/peer-systems.md §9.4):

- chat: ``logprobs.content[i] = {token, logprob, bytes, top_logprobs: [...]}``, the list
  holding the first K of {sampled token, ranks 1..K} (de-duplicated);
- completions: ``logprobs = {tokens, token_logprobs, top_logprobs: [dict], text_offset}``,
  each dict keyed by token string with up to K+1 entries, the sampled token first.

vLLM extensions: `top_k`, `ignore_eos`, `return_tokens_as_token_ids` (logprob tokens keyed
"token_id:<id>", so ids whose strings are equal do not collapse) and completions'
`stop_reason` (the stop string matched). A client that disconnects aborts its sequence before
the next decode step (streaming or not). Bad requests get OpenAI's error JSON with a 4xx
status, and the cheap checks come first: the body's size (413 past max_body_bytes), then the
prompt's size against the context (no tokenizer for a text that cannot fit); the tokenizer
itself runs off the event loop. `serve_model` runs under `deepconf serve`'s connection rules
(deepconf/serve/connections.py). Not here: n > 1 (send n requests), echo, tools, and
authentication.

    engine, tokenizer, name, _ = load_engine(Path("my-falcon-h1"), max_batch=64)
    uvicorn.run(create_app(engine, tokenizer, model_name=name), port=8001)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepconf.backend import token_usage
from deepconf.backends.async_engine import AsyncEngine
from deepconf.backends.bundled import load_engine, render_prompt
from deepconf.backends.engine import SamplingParams, StepOutput
from deepconf.errors import ConfigError
from deepconf.model_settings import card_settings

__all__ = ["create_app", "serve_model"]

MAX_TOP_LOGPROBS = 20  # vLLM's --max-logprobs default
# Far past any prompt the context holds; refused before reading (a 50 MB body once took
# 200 s and 10 GB to fail).
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # vLLM: -1 or 0 = off
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # numpy's generators refuse < 0
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # vLLM extension
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = False  # logprob tokens as 'token_id:<id>'

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("n > 1 is not supported: send n requests (each with its own seed)")
        return n


class _ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_completion_tokens: int | None = Field(None, ge=1)


class _CompletionRequest(_Request):
    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def create_app(
    engine: AsyncEngine,
    tokenizer: Any,
    *,
    model_name: str,
    card: dict[str, Any] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The HTTP app over a running `AsyncEngine` (the caller owns and closes the engine).
    `card`: the model card (deepconf.json); its settings are advertised in /v1/models and
    fill the sampling a request leaves unset. Bodies past `max_body_bytes` get 413."""
    server = _Server(engine, tokenizer, model_name, card or {}, max_body_bytes)
    return Starlette(
        routes=[
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/chat/completions", server.chat, methods=["POST"]),
            Route("/metrics", server.metrics, methods=["GET"]),
            Route("/health", server.metrics, methods=["GET"]),
        ]
    )


def serve_model(
    model_path: str | Path | None, host: str = "127.0.0.1", port: int = 8001, max_batch: int = 64
) -> None:
    """Load a checkpoint folder (None: the bundled model) and serve it until interrupted,
    under the connection rules of `deepconf serve` (head deadline, connection bound)."""
    from deepconf.serve.connections import ConnectionGuard, run_server

    engine, tokenizer, name, card = load_engine(model_path, max_batch=max_batch)
    try:
        app = create_app(engine, tokenizer, model_name=name, card=card)
        run_server(app, ConnectionGuard(), host=host, port=port)
    finally:
        engine.close()


class _Server:
    def __init__(
        self,
        engine: AsyncEngine,
        tokenizer: Any,
        model_name: str,
        card: dict[str, Any],
        max_body_bytes: int,
    ) -> None:
        self.engine = engine
        # The model's own DeepConf settings travel with it: advertised in /v1/models (where
        # `deepconf solve --base-url` reads them) and applied to what a request leaves unset.
        self.settings = card_settings(card)
        self.advertised = {**self.settings, **({"task": card["task"]} if "task" in card else {})}
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.text = TokenText(tokenizer)
        self.http = {"requests_total": 0, "requests_active": 0, "client_disconnects": 0}
        self.max_body_bytes = max_body_bytes
        self.max_token_chars = longest_token_chars(tokenizer, engine.engine.vocab_size)

    # -- plain endpoints ----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "deepconf",
            "max_model_len": self.engine.engine.max_len,
        }
        if self.advertised:
            card["deepconf"] = self.advertised
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(self, request: Request) -> Response:
        s = self.engine.stats
        return JSONResponse(
            {
                "requests_running": s.running,
                "requests_waiting": s.waiting,
                "requests_finished": s.finished,
                "requests_aborted": s.aborted,
                "tokens_generated": s.tokens_generated,
                "prefills": s.prefills,
                "prefix_hits": s.prefix_hits,
                "decode_steps": s.steps,
                **self.http,
            }
        )

    # -- generation endpoints ------------------------------------------------------------------

    async def chat(self, request: Request) -> Response | _Streamed:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response | _Streamed:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response | _Streamed:
        try:
            body = await self._parse(request, _ChatRequest if chat else _CompletionRequest)
            prompt_ids = await self._prompt_ids(body)
            k, want_logprobs = self._logprob_count(body)
            params = self._params(body, prompt_ids, k)
        except _HttpError as exc:
            return _error(exc.status, str(exc), exc.param, exc.code)
        job = _Job(self, body, prompt_ids, params, chat=chat, k=k, logprobs=want_logprobs)
        return _Streamed(
            job.stream() if body.stream else job.whole(), streaming=body.stream, server=self
        )

    async def _parse(self, request: Request, kind: type[_Request]) -> Any:
        try:
            raw = orjson.loads(await self._body(request))
        except orjson.JSONDecodeError as exc:
            raise _HttpError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise _HttpError(400, "the body must be a JSON object")
        try:
            body = kind.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise _HttpError(400, f"{param}: {err['msg']}", param) from None
        if body.model is not None and body.model != self.model_name:
            raise _HttpError(
                404,
                f"The model `{body.model}` does not exist; this server serves `{self.model_name}`",
                "model",
                "model_not_found",
            )
        return body

    async def _body(self, request: Request) -> bytes:
        """The raw body, refused with 413 past max_body_bytes: before reading when
        Content-Length says so, else as soon as the bytes read pass it."""
        limit = self.max_body_bytes
        too_big = _HttpError(
            413, f"request body larger than {limit} bytes", code="request_too_large"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise too_big
            chunks.append(part)
        return b"".join(chunks)

    async def _prompt_ids(self, body: Any) -> list[int]:
        """The prompt's token ids. Its length is checked before the tokenizer runs (a text
        too long for the context is refused on its size alone), and tokenizing runs off
        the event loop: a 10M-character prompt once held /health for 21 s."""
        param = "messages" if isinstance(body, _ChatRequest) else "prompt"
        if isinstance(body, _ChatRequest):
            for i, m in enumerate(body.messages):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise _HttpError(
                        400, "each message needs a string role and content", f"messages.{i}"
                    )
            self._check_text_fits(sum(len(m["content"]) for m in body.messages), param)
            # the bundled backend's rendering: the chat template, or the contents joined
            text = render_prompt(self.tokenizer, body.messages)
        else:
            if body.echo:
                raise _HttpError(400, "echo is not supported", "echo")
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                if len(prompt) != 1:
                    raise _HttpError(
                        400, "one prompt per request: send a request per prompt", param
                    )
                prompt = prompt[0]
            if not isinstance(prompt, str):
                return self._checked_ids(prompt)
            text = prompt
        self._check_text_fits(len(text), param)
        ids = list(await asyncio.to_thread(self.tokenizer.encode, text))
        if not ids:
            raise _HttpError(400, "the prompt is empty", param)
        return ids

    def _check_text_fits(self, chars: int, param: str) -> None:
        """Refuse text that cannot fit the context whatever it says: at most
        `max_token_chars` characters per token (the longest token the vocabulary has)."""
        max_len = self.engine.engine.max_len
        if chars > max_len * self.max_token_chars:
            raise _HttpError(
                400,
                f"the prompt has {chars} characters, more than the {max_len}-token context can"
                f" hold (at most {self.max_token_chars} characters per token)",
                param,
            )

    def _checked_ids(self, ids: list[int]) -> list[int]:
        """A prompt given as token ids: non-empty, each a token of the vocabulary."""
        vocab = self.engine.engine.vocab_size
        if not ids:
            raise _HttpError(400, "the prompt is empty", "prompt")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise _HttpError(
                400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", "prompt"
            )
        return list(ids)

    def _logprob_count(self, body: Any) -> tuple[int, bool]:
        vocab = self.engine.engine.vocab_size
        if isinstance(body, _ChatRequest):
            if body.top_logprobs and not body.logprobs:
                raise _HttpError(400, "top_logprobs needs logprobs: true", "top_logprobs")
            k, want = (body.top_logprobs or 0), body.logprobs
            param = "top_logprobs"
        else:
            k, want, param = (body.logprobs or 0), body.logprobs is not None, "logprobs"
        if k > vocab:
            raise _HttpError(400, f"{param} is {k} but the vocabulary has {vocab} tokens", param)
        return k, want

    def _params(self, body: Any, prompt_ids: list[int], k: int) -> SamplingParams:
        room = self.engine.engine.max_len - len(prompt_ids)
        if room < 1:
            raise _HttpError(
                400,
                f"the prompt has {len(prompt_ids)} tokens; the context holds "
                f"{self.engine.engine.max_len}",
                "messages" if isinstance(body, _ChatRequest) else "prompt",
            )
        max_tokens = body.max_tokens
        if isinstance(body, _ChatRequest):
            max_tokens = body.max_completion_tokens or max_tokens
        # The card's sampling where the request left a field out (vLLM does the same with a
        # model's generation_config.json): OpenAI's defaults (temperature 1, no max_tokens)
        # are not this model's.
        given, card = body.model_fields_set, self.settings
        max_tokens = max_tokens or card.get("max_tokens")
        temperature = body.temperature if "temperature" in given else card.get("temperature")
        top_p = body.top_p if "top_p" in given else card.get("top_p")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        try:
            return SamplingParams(
                temperature=body.temperature if temperature is None else temperature,
                top_p=body.top_p if top_p is None else top_p,
                top_k=max(body.top_k or 0, 0),
                max_tokens=max_tokens or (16 if isinstance(body, _CompletionRequest) else room),
                seed=body.seed,
                stop=tuple(stop),
                logprobs=k,
                ignore_eos=body.ignore_eos,
            )
        except ConfigError as exc:
            raise _HttpError(400, str(exc), "stop") from None


class _Job:
    """One request's generation and its rendering into OpenAI objects."""

    def __init__(
        self,
        server: _Server,
        body: Any,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        chat: bool,
        k: int,
        logprobs: bool,
    ) -> None:
        self.server, self.body, self.prompt_ids, self.params = server, body, prompt_ids, params
        self.chat, self.k, self.logprobs = chat, k, logprobs
        self.as_ids = body.return_tokens_as_token_ids
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.completion_tokens = 0
        self.offset = 0  # completions' text_offset

    def usage(self) -> dict[str, int]:
        return token_usage(len(self.prompt_ids), self.completion_tokens)

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.server.model_name,
        }

    async def _outputs(self) -> AsyncIterator[list[StepOutput]]:
        async for outs in self.server.engine.generate(self.prompt_ids, self.params, self.id):
            self.completion_tokens += len(outs)
            yield outs

    def _logprobs(self, outs: list[StepOutput]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return {"content": [self.server.text.chat_entry(o, self.k, self.as_ids) for o in outs]}
        lp: dict[str, list[Any]] = {
            "text_offset": [],
            "token_logprobs": [],
            "tokens": [],
            "top_logprobs": [],
        }
        for o in outs:
            token, logprob, top = self.server.text.completion_entry(o, self.k, self.as_ids)
            lp["text_offset"].append(self.offset)
            lp["token_logprobs"].append(logprob)
            lp["tokens"].append(token)
            lp["top_logprobs"].append(top)
            self.offset += len(token)
        return lp

    async def whole(self) -> AsyncIterator[bytes]:
        text: list[str] = []
        entries: list[StepOutput] = []
        finish = None
        async for outs in self._outputs():
            text.extend(o.text for o in outs)
            entries.extend(outs)
            finish = outs[-1].finish_reason
        content = "".join(text)
        logprobs = self._logprobs(entries)
        if self.chat:
            message = {"role": "assistant", "content": content}
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {
                "index": 0,
                "text": content,
                "logprobs": logprobs,
                "finish_reason": finish,
                "stop_reason": entries[-1].stop_reason if entries else None,
            }
        yield orjson.dumps(self._head(self.object) | {"choices": [choice], "usage": self.usage()})

    async def stream(self) -> AsyncIterator[bytes]:
        include_usage = bool((self.body.stream_options or {}).get("include_usage"))
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        head = self._head(obj)
        if self.chat:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield _sse(head | {"choices": [first]})
        async for outs in self._outputs():
            text = "".join(o.text for o in outs)
            choice: dict[str, Any] = {"index": 0}
            if self.chat:
                choice["delta"] = {"content": text} if text else {}
            else:
                choice["text"] = text
            choice["logprobs"] = self._logprobs(outs)
            choice["finish_reason"] = outs[-1].finish_reason
            if not self.chat:
                choice["stop_reason"] = outs[-1].stop_reason
            yield _sse(head | {"choices": [choice]} | ({"usage": None} if include_usage else {}))
        if include_usage:
            yield _sse(head | {"choices": [], "usage": self.usage()})
        yield b"data: [DONE]\n\n"


class _Streamed:
    """An ASGI response that races the generation against the client's disconnect.

    Starlette's StreamingResponse only notices a gone client when a send fails (ASGI 2.4) and
    leaves the generator to the garbage collector; here a watcher task reads `receive` and
    cancels the generation the moment `http.disconnect` arrives, and the generator is always
    closed, which aborts the engine request before its next decode step.
    """

    def __init__(self, body: AsyncIterator[bytes], *, streaming: bool, server: _Server) -> None:
        self.body, self.streaming, self.server = body, streaming, server

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        http = self.server.http
        http["requests_total"] += 1
        http["requests_active"] += 1
        work = asyncio.ensure_future(self._send(send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                http["client_disconnects"] += 1
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        finally:
            watch.cancel()
            http["requests_active"] -= 1

    async def _send(self, send: Any) -> None:
        ctype = b"text/event-stream" if self.streaming else b"application/json"
        started = False
        try:
            async for chunk in self.body:
                if not started:
                    headers = [(b"content-type", ctype), (b"cache-control", b"no-cache")]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ConfigError as exc:  # the engine refused the prompt
            if started:
                raise
            resp = _error(400, str(exc), "prompt")
            await resp({"type": "http"}, _never, send)
            return
        finally:
            await self.body.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Callable[[], Awaitable[Any]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


class TokenText:
    """Per-token strings and UTF-8 bytes for logprob entries, cached by token id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def piece(self, token_id: int, as_ids: bool = False) -> tuple[str, list[int]]:
        key = -1 - token_id if as_ids else token_id
        hit = self._cache.get(key)
        if hit is None:
            text = f"token_id:{token_id}" if as_ids else self._tok.decode([token_id])
            hit = self._cache[key] = (text, list(text.encode("utf-8", errors="replace")))
        return hit

    def chat_entry(self, out: StepOutput, k: int, as_ids: bool = False) -> dict[str, Any]:
        """{token, logprob, bytes, top_logprobs}: the first k of sampled + ranks, de-duplicated."""
        token, raw = self.piece(out.token_id, as_ids)
        logprob = _clamp(out.logprob)
        top = [{"token": token, "logprob": logprob, "bytes": raw}] if k else []
        for tid, value in zip(out.top_ids.tolist(), out.top_logprobs.tolist(), strict=True):
            if len(top) >= k:
                break
            if tid != out.token_id:
                s, b = self.piece(tid, as_ids)
                top.append({"token": s, "logprob": _clamp(value), "bytes": b})
        return {"token": token, "logprob": logprob, "bytes": raw, "top_logprobs": top}

    def completion_entry(
        self, out: StepOutput, k: int, as_ids: bool = False
    ) -> tuple[str, float, dict[str, float]]:
        """(token, logprob, {token string: logprob}) with up to k+1 keys, sampled first;
        ids that decode to the same string collapse into one key (as in vLLM)."""
        token, _ = self.piece(out.token_id, as_ids)
        logprob = _clamp(out.logprob)
        top = {token: logprob}
        for tid, value in zip(out.top_ids.tolist(), out.top_logprobs.tolist(), strict=True):
            top.setdefault(self.piece(tid, as_ids)[0], _clamp(value))
        return token, logprob, top


def longest_token_chars(tokenizer: Any, vocab_size: int) -> int:
    """The most characters one token of the vocabulary decodes to (at least 1)."""
    longest = 1
    for token_id in range(vocab_size):
        longest = max(longest, len(tokenizer.decode([token_id])))
    return longest


def _clamp(logprob: float) -> float:
    # vLLM's convention: -inf becomes -9999.0 so JSON stays valid.
    return logprob if logprob > -9999.0 else -9999.0


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or status}}
    return JSONResponse(body, status_code=status)
