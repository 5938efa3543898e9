"""One request's DeepConf solve inside `deepconf serve`: run it, watch the client, stream
progress, render the answer, and map errors to OpenAI-style HTTP errors.

`SolveResponse` is an ASGI response that owns a running `Solve`: it watches `receive()`
for the client's disconnect the whole time (so a gone client cancels the solve, and with it
every upstream stream), and either streams progress chunks then the answer (the extension
documented in deepconf/serve/app.py) or sends one JSON completion. No routing or auth here.

    solve = Solve(req, True, config, backend, rid, started, progress_interval=0.25,
                  log_request=server.log_request, release=server.release)
    return SolveResponse(solve)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from deepconf.backend import Backend, TokenBatch, TraceRequest
from deepconf.config import DeepConfConfig
from deepconf.controller import DeepConf
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConfigError,
    DeepConfError,
    RateLimitedError,
    RequestRejectedError,
)
from deepconf.result import Progress, SolveResult
from deepconf.serve import wire

log = logging.getLogger("deepconf.serve")


class LogRequest(Protocol):
    """Writes the one JSON log line of a request."""

    def __call__(
        self,
        rid: str,
        endpoint: str,
        status: int,
        outcome: str,
        started: float,
        result: SolveResult | None,
        **extra: Any,
    ) -> None: ...


class HttpError(Exception):
    """A request answered with an OpenAI-style error (status, message, type, param, code)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return wire.error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def solve_error(exc: BaseException) -> HttpError:
    """Map an error raised while opening the upstream or solving to the HTTP answer."""
    exc = _first_of(exc)
    if isinstance(exc, ConfigError):
        return HttpError(400, str(exc))
    if isinstance(exc, RateLimitedError):
        retry = {"Retry-After": str(int(exc.retry_after or 1))}
        return HttpError(429, f"upstream rate limit: {exc}", "rate_limit_error", headers=retry)
    if isinstance(exc, RequestRejectedError) and exc.status == 404:
        # Almost always a model name the upstream does not serve: its 404, passed on.
        message = f"the upstream answered 404: {exc}"
        return HttpError(404, message, param="model", code="model_not_found")
    if isinstance(exc, RequestRejectedError):
        return HttpError(400, f"the upstream rejected the request: {exc}", code="upstream_rejected")
    if isinstance(exc, CapabilityError):
        return HttpError(502, str(exc), "upstream_error", code="upstream_capability")
    if isinstance(exc, BackendError):
        return HttpError(502, str(exc), "upstream_error", code="upstream_unavailable")
    if isinstance(exc, DeepConfError):
        return HttpError(500, str(exc), "server_error")
    return HttpError(
        500, f"internal error ({type(exc).__name__}); see the server log", "server_error"
    )


def _first_of(exc: BaseException) -> BaseException:
    """A group's first deepconf error, else its first error: traces that fail together (an
    answer pattern that is too slow fails every trace that meets it) raise them as a group."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    ours = exc.subgroup(lambda e: isinstance(e, DeepConfError))
    group = ours if ours is not None else exc
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


class Metered:
    """A per-solve view of a shared backend that notes the prompt tokens the upstream
    reports in its usage chunks (for `usage.prompt_tokens`)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.model = backend.model
        self.prompt_tokens: int | None = None

    async def open(self) -> None:
        await self._backend.open()

    async def aclose(self) -> None:
        """Nothing: the shared backend outlives the solve."""

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        async with contextlib.aclosing(self._backend.stream(request)) as stream:
            async for batch in stream:
                prompt = batch.usage.get("prompt_tokens") if batch.usage else None
                if prompt:
                    self.prompt_tokens = int(prompt)
                yield batch


class Solve:
    """One request's solve: its task, its latest progress, and the log record."""

    def __init__(
        self,
        request: wire.ChatCompletionRequest | wire.CompletionRequest,
        chat: bool,
        config: DeepConfConfig,
        backend: Backend,
        rid: str,
        started: float,
        *,
        progress_interval: float,
        log_request: LogRequest,
        release: Callable[[], None],
    ) -> None:
        self.request, self.chat, self.config = request, chat, config
        self.progress_interval = progress_interval
        self.log_request = log_request
        self.release = release  # frees the server's solve slot; called once, at the end
        self.rid, self.started, self.created = rid, started, int(time.time())
        self.meter = Metered(backend)
        self.progress: Progress | None = None
        engine = DeepConf(self.meter, config, on_progress=self._on_progress)
        self.task: asyncio.Task[SolveResult] = asyncio.create_task(
            engine.solve(request.prompt), name=f"solve-{rid}"
        )

    def _on_progress(self, p: Progress) -> None:
        self.progress = p  # the stream loop samples it at its own pace

    async def cancel(self) -> None:
        """Cancel the solve and wait until every trace (and so every upstream stream) closed."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    def render(self, result: SolveResult) -> tuple[dict[str, Any], Any, dict[str, int]]:
        best = wire.best_trace(result, wire.ranking_metric(self.config))
        usage = wire.usage(result, self.meter.prompt_tokens)
        return wire.summary(result, best, self.meter.prompt_tokens), best, usage

    def log(
        self, status: int, outcome: str, result: SolveResult | None = None, **extra: Any
    ) -> None:
        self.log_request(
            self.rid,
            "/v1/chat/completions" if self.chat else "/v1/completions",
            status,
            outcome,
            self.started,
            result,
            stream=self.request.stream,
            **extra,
        )


class SolveResponse(Response):
    """Runs a solve while watching the client; streams progress when asked to.

    Disconnects are watched on `receive()` directly (uvicorn reports http.disconnect there
    once the body is read), not left to Starlette, so a streaming solve is cancelled even
    while no chunk is being sent, and a non-streaming one too."""

    def __init__(self, solve: Solve) -> None:
        super().__init__()
        self.solve = solve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.create_task(_wait_disconnect(receive))
        try:
            if self.solve.request.stream:
                await self._stream(send, gone)
            else:
                await self._plain(scope, send, gone)
        finally:
            gone.cancel()
            if not self.solve.task.done():
                await self.solve.cancel()
            self.solve.release()

    async def _plain(self, scope: Scope, send: Send, gone: asyncio.Task[None]) -> None:
        s = self.solve
        await asyncio.wait({s.task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not s.task.done():
            await s.cancel()
            s.log(499, "client_disconnected")
            return
        try:
            result = s.task.result()
        except Exception as exc:
            err = logged_error(exc, s.rid)
            s.log(err.status, "error", error=err.message)
            await err.response()(scope, _no_receive, send)
            return
        deepconf, best, usage = s.render(result)
        build = wire.chat_completion if s.chat else wire.completion
        body = build(s.rid, s.created, s.request.model, best, usage, deepconf)
        await JSONResponse(body, headers={"x-request-id": s.rid})(scope, _no_receive, send)
        s.log(200, "ok", result)

    async def _stream(self, send: Send, gone: asyncio.Task[None]) -> None:
        s = self.solve
        open_ = True

        async def emit(obj: dict[str, Any] | str) -> None:
            nonlocal open_
            data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            try:
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"data: {data}\n\n".encode(),
                        "more_body": True,
                    }
                )
            except OSError:
                open_ = False  # the client went away mid-send; `gone` will say so too

        def chunk(**kw: Any) -> dict[str, Any]:
            return wire.chunk(s.chat, s.rid, s.created, s.request.model, **kw)

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", s.rid.encode()),
                ],
            }
        )
        await emit(chunk(delta={"role": "assistant", "content": ""} if s.chat else {}))
        sent: Progress | None = None
        while not s.task.done():
            await asyncio.wait(
                {s.task, gone},
                timeout=s.progress_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if gone.done() or not open_:
                await s.cancel()
                s.log(499, "client_disconnected")
                return
            if not s.task.done() and s.progress is not None and s.progress != sent:
                sent = s.progress
                await emit(chunk(deepconf=wire.progress_payload(sent)))
        try:
            result = s.task.result()
        except Exception as exc:
            err = logged_error(exc, s.rid)
            await emit(err.body())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            s.log(200, "error", error=err.message)
            return
        deepconf, best, usage = s.render(result)
        if s.chat:
            if best is not None and best.reasoning:
                await emit(chunk(delta={"reasoning_content": best.reasoning}))
            await emit(chunk(delta={"content": best.text if best else ""}))
        else:
            await emit(chunk(delta={"text": wire.completion_text(best)}))
        await emit(chunk(finish=wire.finish_reason(best), deepconf={"event": "result", **deepconf}))
        if s.request.include_usage:
            await emit(chunk(usage_=usage, empty_choices=True))
        await emit("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        s.log(200, "ok", result)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _no_receive() -> dict[str, Any]:  # a JSONResponse sent from inside our response
    return {"type": "http.disconnect"}


def logged_error(exc: BaseException, rid: str) -> HttpError:
    err = solve_error(exc)
    if err.status >= 500 and not isinstance(exc, DeepConfError):
        log.error("request %s failed", rid, exc_info=exc)
    return err
