"""HTTP answers and httpx exceptions, turned into deepconf errors whose messages name the cause.

The HTTP backend (backends/openai_http.py) meets three kinds of trouble before a stream
starts: an httpx exception (translated by `HttpErrors`, with the reason found along the
exception chain: a reset has no text of its own), a status other than 200 (`status_error`:
429 carries Retry-After, 5xx is retryable, 4xx is the request's fault), and a 200 that is not
an event stream (`not_a_stream`: a proxy's HTML error page, or one JSON document from a server
that ignored stream=true), which is never retried as a stream. No I/O here.

    with HttpErrors(url):
        response = await client.send(request, stream=True)
    if response.status_code != 200:
        raise status_error(response, url)
"""

from __future__ import annotations

from typing import Literal

import httpx

from deepconf.backends.routing import parse_retry_after
from deepconf.errors import (
    BackendError,
    ConnectError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    StreamError,
)


class HttpErrors:
    """Translate httpx exceptions raised inside the block into deepconf errors."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if isinstance(exc, httpx.TimeoutException):
            raise ConnectError(
                f"{self.url} did not answer in time ({type(exc).__name__}): raise the timeout"
                " or check that the server is not overloaded"
            ) from exc
        if isinstance(exc, httpx.ConnectError):
            raise ConnectError(
                f"cannot connect to {self.url} ({exc}): start the server or fix --base-url"
            ) from exc
        if isinstance(exc, httpx.TransportError):
            raise ConnectError(f"the connection to {self.url} broke: {reason(exc)}") from exc
        if isinstance(exc, httpx.HTTPError):
            raise BackendError(f"HTTP error talking to {self.url}: {reason(exc)}") from exc
        return False


def reason(exc: BaseException) -> str:
    """The first non-empty message along an exception's chain: a reset surfaces as an httpx
    ReadError with no text of its own over the OSError that says "Connection reset by peer"."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return f"{type(seen).__name__}: {seen}" if seen is not exc else str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def server_message(response: httpx.Response) -> str:
    """The reason a server gave for refusing a request, from any common error shape."""
    try:
        obj = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, str):
            return err
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if err.get(key):
                    return str(err[key])
    return str(obj)[:500]


# Media types a 200 may carry that cannot be an event stream: an error page from a proxy, or
# one JSON document from a server that ignored stream=true. Never retried as a stream.
NOT_STREAMS = ("text/html", "application/json")


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def not_a_stream(response: httpx.Response, url: str) -> StreamError:
    shown = " ".join(response.text[:300].split())
    if media_type(response) == "text/html":
        return StreamError(
            f"{url} answered 200 with text/html (an error page?), not an event stream:"
            f" {shown!r}. Check --base-url (usually ending in /v1) and any proxy in front"
        )
    return StreamError(
        f"{url} answered 200 with one JSON document, not an event stream (it ignored"
        f" stream=true): {shown!r}"
    )


def status_error(response: httpx.Response, url: str) -> BackendError:
    status, said = response.status_code, server_message(response)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimitedError(f"{url} is rate limiting (429): {said}", retry_after)
    if status >= 500:
        return ServerError(f"{url} failed with HTTP {status}: {said}")
    hint = {
        401: "; check --api-key or $OPENAI_API_KEY",
        403: "; check --api-key or $OPENAI_API_KEY",
        404: "; check --base-url (usually ending in /v1), --api and --model",
    }.get(status, "")
    return RequestRejectedError(f"{url} rejected the request (HTTP {status}): {said}{hint}", status)
