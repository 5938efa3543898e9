"""Every error a solve can raise maps to one HTTP answer that the openai client turns into
the right typed exception: status, OpenAI error type, code and param, the headers a client
backs off by, and a message that quotes the cause. A group of errors (traces failing
together) answers as its first deepconf error. Beside them, the one detail of a solve's
metering a client can misread: prompt tokens never reported stay unknown."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
from support.fake_backend import FakeBackend, Script

from deepconf.backend import TraceRequest
from deepconf.config import DeepConfConfig, SamplingConfig
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConfigError,
    ConnectError,
    DatasetError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    StreamError,
)
from deepconf.serve.solve import HttpError, Metered, Solve, logged_error, solve_error
from deepconf.serve.wire import ChatCompletionRequest


def answer(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, the error object of the body, headers) as the client receives them."""
    response = solve_error(exc).response()
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length",)}
    headers.pop("content-type")
    return response.status_code, json.loads(response.body)["error"], headers


def error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"message": message, "type": type_, "param": param, "code": code}


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (ConfigError("top_logprobs must be at most 20"), 400,
         error("top_logprobs must be at most 20", "invalid_request_error")),
        (RequestRejectedError("model 'x' does not exist", status=404), 404,
         error("the upstream answered 404: model 'x' does not exist", "invalid_request_error",
               "model", "model_not_found")),
        (RequestRejectedError("prompt too long", status=422), 400,
         error("the upstream rejected the request: prompt too long", "invalid_request_error",
               None, "upstream_rejected")),
        (RequestRejectedError("no status known"), 400,
         error("the upstream rejected the request: no status known", "invalid_request_error",
               None, "upstream_rejected")),
        (CapabilityError("no logprobs"), 502,
         error("no logprobs", "upstream_error", None, "upstream_capability")),
        (ConnectError("refused"), 502,
         error("refused", "upstream_error", None, "upstream_unavailable")),
        (ServerError("upstream 503"), 502,
         error("upstream 503", "upstream_error", None, "upstream_unavailable")),
        (StreamError("cut"), 502, error("cut", "upstream_error", None, "upstream_unavailable")),
        (BackendError("gone"), 502, error("gone", "upstream_error", None, "upstream_unavailable")),
        (DatasetError("odd"), 500, error("odd", "server_error")),
        (KeyError("x"), 500,
         error("internal error (KeyError); see the server log", "server_error")),
    ],
)  # fmt: skip
def test_each_error_has_its_status_type_and_code(
    exc: BaseException, status: int, body: dict
) -> None:
    got_status, got_body, headers = answer(exc)
    assert (got_status, got_body) == (status, body)
    assert headers == {}


def test_a_rate_limit_passes_its_retry_after_on_as_whole_seconds() -> None:
    """The client's SDK backs off by Retry-After; a fraction is cut to whole seconds, and an
    upstream that named none gets 1 second."""
    status, body, headers = answer(RateLimitedError("slow down", retry_after=7.9))
    assert status == 429
    assert body == error("upstream rate limit: slow down", "rate_limit_error")
    assert headers == {"retry-after": "7"}
    assert answer(RateLimitedError("slow down"))[2] == {"retry-after": "1"}


def test_a_group_answers_as_its_first_deepconf_error() -> None:
    """Traces that fail together raise a group: the first deepconf error in it decides, even
    behind a plain error and nested groups."""
    group = ExceptionGroup(
        "traces", [KeyError("x"), ExceptionGroup("inner", [CapabilityError("no logprobs")])]
    )
    assert answer(group)[0] == 502
    assert answer(group)[1]["code"] == "upstream_capability"
    plain = ExceptionGroup("traces", [ValueError("a"), KeyError("b")])
    assert answer(plain)[1]["message"] == "internal error (ValueError); see the server log"


def test_an_http_error_defaults_to_an_invalid_request() -> None:
    e = HttpError(400, "bad")
    assert (e.status, e.message, e.type, e.param, e.code, e.headers) == (
        400, "bad", "invalid_request_error", None, None, {},
    )  # fmt: skip
    assert str(e) == "bad"
    assert e.body() == {"error": error("bad", "invalid_request_error")}


def test_only_an_unexpected_failure_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 500 from a bug is logged with its stack under the request's id (the client only
    gets "see the server log"); errors deepconf raised on purpose, a 500 included, carry
    their own message to the client and are not logged as failures."""
    with caplog.at_level(logging.ERROR, logger="deepconf.serve"):
        assert logged_error(KeyError("x"), "req-1").status == 500
        assert logged_error(DatasetError("odd"), "req-2").status == 500
        assert logged_error(ServerError("upstream 503"), "req-3").status == 502
    assert [r.getMessage() for r in caplog.records] == ["request req-1 failed"]
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[0] is KeyError


async def test_prompt_tokens_stay_unknown_until_the_upstream_reports_them() -> None:
    """An upstream that sends no usage leaves prompt_tokens_per_trace null in the summary
    (not 0, not ""), so a client can tell "not reported" from "free"."""
    fake = FakeBackend(default=Script(n=3))
    metered = Metered(fake)
    assert metered.prompt_tokens is None
    request = TraceRequest(0, "q", SamplingConfig(), top_logprobs=4)
    async with contextlib.aclosing(metered.stream(request)) as stream:
        assert sum([b.n_tokens async for b in stream]) == 3
    assert metered.prompt_tokens is None


async def test_cancelling_a_solve_that_already_failed_raises_nothing() -> None:
    """A client that leaves in the loop turn its solve fails in: the stream loop cancels a
    task that is already done. Its error is the response's to report (or nobody's, the
    client being gone), never an exception out of the cancel, which would escape the ASGI
    app as a traceback."""
    failing = FakeBackend(default=Script(n=3, fail_at=1, error=RuntimeError("upstream broke")))
    request = ChatCompletionRequest.model_validate(
        {"model": "fake-model", "messages": [{"role": "user", "content": "q"}]}
    )
    solve = Solve(
        request,
        True,
        DeepConfConfig(budget=2, warmup=1, concurrency=1),
        failing,
        "req-1",
        0.0,
        progress_interval=1.0,
        log_request=lambda *a, **kw: None,
        release=lambda: None,
    )
    with contextlib.suppress(Exception):
        await solve.task
    assert solve.task.done() and solve.task.exception() is not None
    await solve.cancel()
