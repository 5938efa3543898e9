"""The one error hierarchy of deepconf.

Every error a user can meet is a `DeepConfError`, and its message says what to do next.
Third-party exceptions (httpx, safetensors, json) are translated at the boundary that
meets them, chained with ``raise ... from exc``.

    DeepConfError
    ├── ConfigError              bad settings or input from the user
    ├── BackendError             a model server or engine could not serve a trace
    │   ├── ConnectError         nothing listens there, or the connection dropped
    │   ├── RateLimitedError     HTTP 429 (carries retry_after seconds when given)
    │   ├── ServerError          HTTP 5xx
    │   ├── RequestRejectedError HTTP 4xx other than 429: retrying will not help
    │   ├── CapabilityError      the server returns fewer logprobs than asked, or none
    │   └── StreamError          a stream broke or sent something unreadable mid-trace
    ├── ModelLoadError           a checkpoint folder is missing a file or a field
    └── DatasetError             an eval dataset file cannot be read
"""

from __future__ import annotations


class DeepConfError(Exception):
    """Base of every error deepconf raises on purpose."""


class ConfigError(DeepConfError):
    """A setting or an input the user gave is invalid."""


class BackendError(DeepConfError):
    """A backend could not serve a trace.

    `retryable` says whether trying again later can help (connect errors, 429, 5xx).
    """

    retryable: bool = False


class ConnectError(BackendError):
    retryable = True


class RateLimitedError(BackendError):
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(BackendError):
    retryable = True


class RequestRejectedError(BackendError):
    """The server refused the request (4xx); the message quotes the server's reason and
    `status` is the HTTP status (`deepconf serve` passes a 404 on as a 404)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CapabilityError(BackendError):
    """The server cannot give what DeepConf needs (top-k logprobs)."""


class StreamError(BackendError):
    """A stream broke or sent unreadable data after it had started."""


class ModelLoadError(DeepConfError):
    """A checkpoint folder is missing a file or holds a malformed one."""


class DatasetError(DeepConfError):
    """An evaluation dataset cannot be read or lacks a needed field."""
