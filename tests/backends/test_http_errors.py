"""httpx exceptions and HTTP answers turned into deepconf errors (backends/http_errors.py).

These are pure functions of an exception or a response, so the responses are built in memory;
tests/backends/test_openai_http.py and test_stream_integrity.py drive the same code through a
real loopback server. Pinned by mutation testing (.ci/mutation): which error type each case
becomes, and the words that tell the user what to do.
"""

from __future__ import annotations

import json

import httpx
import pytest

from deepconf.backends.http_errors import (
    HttpErrors,
    media_type,
    not_a_stream,
    reason,
    server_message,
    status_error,
)
from deepconf.errors import (
    BackendError,
    ConnectError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    StreamError,
)

URL = "http://gpu-7:8000/v1"


def response(status: int, body: bytes | str | object = b"", **headers: str) -> httpx.Response:
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
        headers.setdefault("content_type", "application/json")
    return httpx.Response(
        status,
        content=body.encode() if isinstance(body, str) else body,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def chained(
    exc: BaseException, *, cause: BaseException | None = None, context: BaseException | None = None
) -> BaseException:
    exc.__cause__, exc.__context__ = cause, context
    return exc


# --- reason: the first message along the chain --------------------------------------------------


def test_reason_is_the_exceptions_own_message_when_it_has_one() -> None:
    assert reason(httpx.ReadError("server hung up")) == "server hung up"


def test_reason_walks_the_chain_and_names_the_type_it_found_the_message_on() -> None:
    """A reset surfaces as a ReadError without text over the OSError that says why."""
    exc = chained(httpx.ReadError(""), cause=OSError("Connection reset by peer"))
    assert reason(exc) == "OSError: Connection reset by peer"
    exc = chained(httpx.ReadError(""), context=chained(ValueError(""), context=KeyError("k")))
    assert reason(exc) == "KeyError: 'k'"


def test_reason_prefers_the_cause_over_the_context() -> None:
    exc = chained(httpx.ReadError(""), cause=OSError("cause"), context=OSError("context"))
    assert reason(exc) == "OSError: cause"


def test_reason_without_any_message_is_the_type_name() -> None:
    exc = chained(httpx.ReadError(""), cause=OSError())
    assert reason(exc) == "ReadError"


# --- HttpErrors: httpx exceptions become deepconf errors -------------------------------------


@pytest.mark.parametrize(
    ("raised", "error_type", "message"),
    [
        (
            httpx.ReadTimeout("timed out"),
            ConnectError,
            f"{URL} did not answer in time (ReadTimeout): raise the timeout or check that the"
            " server is not overloaded",
        ),
        (
            httpx.ConnectError("All connection attempts failed"),
            ConnectError,
            f"cannot connect to {URL} (All connection attempts failed): start the server or"
            " fix --base-url",
        ),
        (
            chained(httpx.ReadError(""), cause=OSError("Connection reset by peer")),
            ConnectError,
            f"the connection to {URL} broke: OSError: Connection reset by peer",
        ),
        (
            httpx.DecodingError("bad gzip"),
            BackendError,
            f"HTTP error talking to {URL}: bad gzip",
        ),
    ],
    ids=["timeout", "connect", "reset", "other-httpx"],
)
def test_httpx_errors_become_deepconf_errors_naming_the_server(raised, error_type, message):
    """Timeouts and connection failures are retryable ConnectErrors; any other httpx error is
    a plain BackendError; the httpx exception stays attached as the cause."""
    with pytest.raises(BackendError) as info, HttpErrors(URL):
        raise raised
    assert type(info.value) is error_type
    assert str(info.value) == message
    assert info.value.__cause__ is raised


def test_other_exceptions_pass_through_unchanged() -> None:
    with pytest.raises(KeyError, match="not ours"), HttpErrors(URL):
        raise KeyError("not ours")
    with HttpErrors(URL):
        pass  # and a block that raises nothing stays quiet


# --- server_message: the reason a server gave -------------------------------------------------


@pytest.mark.parametrize(
    ("resp", "said"),
    [
        (
            response(400, {"error": {"message": "max_tokens is too large"}}),
            "max_tokens is too large",
        ),
        (response(400, {"error": "model not loaded"}), "model not loaded"),
        (response(422, {"detail": "field required"}), "field required"),  # FastAPI's shape
        (response(400, {"error": {"msg": "bad seed"}}), "bad seed"),
        (
            response(400, {"error": {"message": "", "detail": "empty message skipped"}}),
            "empty message skipped",
        ),
        (response(400, {"error": {"code": 7}}), "{'error': {'code': 7}}"),
        (response(400, [1, 2]), "[1, 2]"),
        (response(502, "  <html>Bad Gateway</html>\n"), "<html>Bad Gateway</html>"),
        (response(502, ""), "Bad Gateway"),  # no body at all: the status's reason phrase
    ],
    ids=[
        "message",
        "string",
        "detail",
        "msg",
        "first-non-empty",
        "unknown-dict",
        "list",
        "text",
        "empty",
    ],
)
def test_server_message_reads_every_common_error_shape(resp, said) -> None:
    assert server_message(resp) == said


def test_server_message_is_at_most_500_characters() -> None:
    assert server_message(response(500, "x" * 2000)) == "x" * 500
    assert server_message(response(500, {"y": "z" * 2000})) == str({"y": "z" * 2000})[:500]


# --- status_error and not_a_stream ------------------------------------------------------------


def test_429_is_rate_limited_with_the_servers_retry_after() -> None:
    err = status_error(response(429, {"error": {"message": "slow down"}}, retry_after="7"), URL)
    assert type(err) is RateLimitedError
    assert (str(err), err.retry_after) == (f"{URL} is rate limiting (429): slow down", 7.0)
    assert status_error(response(429, "busy"), URL).retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_a_retryable_server_error(status: int) -> None:
    err = status_error(response(status, {"error": {"message": "oom"}}), URL)
    assert type(err) is ServerError and err.retryable
    assert str(err) == f"{URL} failed with HTTP {status}: oom"


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, ""),
        (401, "; check --api-key or $OPENAI_API_KEY"),
        (402, ""),
        (403, "; check --api-key or $OPENAI_API_KEY"),
        (404, "; check --base-url (usually ending in /v1), --api and --model"),
        (422, ""),
    ],
)
def test_4xx_is_rejected_with_a_hint_where_one_helps(status: int, hint: str) -> None:
    err = status_error(response(status, {"error": {"message": "no"}}), URL)
    assert type(err) is RequestRejectedError and not err.retryable
    assert str(err) == f"{URL} rejected the request (HTTP {status}): no{hint}"
    assert err.status == status  # `deepconf serve` passes a 404 on as a 404


@pytest.mark.parametrize(
    ("header", "media"),
    [
        ("text/event-stream", "text/event-stream"),
        ("Text/HTML; charset=utf-8", "text/html"),
        (" application/json ;charset=UTF-8", "application/json"),
        (None, ""),
    ],
)
def test_media_type_is_the_lowercased_type_without_parameters(header, media) -> None:
    """What `_send` compares with NOT_STREAMS: parameters such as charset dropped, case
    folded; no Content-Type at all is the empty string."""
    resp = httpx.Response(200, headers={"content-type": header} if header else {})
    assert media_type(resp) == media


def test_a_200_that_is_not_an_event_stream_quotes_what_came_instead() -> None:
    """The body is shown with its whitespace collapsed, cut at 300 characters."""
    page = "<html>\n  <body>\t502 Bad   Gateway</body>\n</html>"
    err = not_a_stream(response(200, page, content_type="text/html; charset=utf-8"), URL)
    assert type(err) is StreamError
    assert str(err) == (
        f"{URL} answered 200 with text/html (an error page?), not an event stream:"
        " '<html> <body> 502 Bad Gateway</body> </html>'. Check --base-url (usually ending in"
        " /v1) and any proxy in front"
    )
    doc = {"choices": [{"text": "y" * 400}]}
    err = not_a_stream(response(200, doc), URL)
    shown = json.dumps(doc)[:300]
    assert str(err) == (
        f"{URL} answered 200 with one JSON document, not an event stream (it ignored"
        f" stream=true): {shown!r}"
    )
