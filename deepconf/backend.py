"""The Backend interface: the only thing the controller knows about model serving.

A backend turns one `TraceRequest` into a stream of `TokenBatch`es. The stream is an async
generator with one owner; closing it (``await stream.aclose()``) aborts the trace on the
server, which is how a prune saves compute. Backends: `deepconf.backends.openai_http`
(any OpenAI-compatible server) and `deepconf.backends.bundled` (the in-process numpy model).

A backend may also offer `push(request, consume)` (`PushBackend`): the same batches handed to
`consume(batch)` as they arrive, True from it stopping the trace. A stream read one network
read at a time costs a task step per read through the chain of async generators; a push
does the consumer's work where the bytes land. `deliver()` uses it where a backend has it.

    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for batch in stream:
            confs = token_confidence(batch.top_logprobs)      # (n,)

    await deliver(backend, request, consume)                  # consume(batch) -> stop now?
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deepconf.config import SamplingConfig

# A chat conversation in OpenAI's shape, or a raw prompt string.
Message = dict[str, Any]
Prompt = str | list[Message]


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One trace to generate: trace `index` of a solve, with its own seed."""

    index: int
    prompt: Prompt
    sampling: SamplingConfig
    top_logprobs: int = 20
    seed: int | None = None  # already offset: seed + index


@dataclass(slots=True)
class TokenBatch:
    """The tokens that arrived together (one SSE chunk may carry several).

    `top_logprobs` holds, for each of the n tokens, the k largest logprobs the server
    returned at that position, largest first; a position with fewer than k entries is
    padded with NaN. Tokens are counted from its rows, never from chunks.
    """

    top_logprobs: np.ndarray  # (n, k) float64
    text: str = ""  # answer/content text of these tokens
    reasoning: str = ""  # reasoning text (delta.reasoning_content / delta.reasoning)
    finish_reason: str | None = None  # "stop", "length", ... on the last batch
    usage: dict[str, int] = field(default_factory=dict)  # server usage, when it sends one
    # (n,) token confidences when the backend computed them as it decoded (the C decoder
    # does, to spare each read numpy's per-call cost); None: computed from top_logprobs
    token_conf: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.top_logprobs.shape[0])


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` object (what `TokenBatch.usage` carries from a server)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@runtime_checkable
class Backend(Protocol):
    """What a model server must offer DeepConf."""

    #: the model name recorded in trace files
    model: str

    async def open(self) -> None:
        """Connect, discover the model, and check that top-k logprobs come back.

        Idempotent. Raises `CapabilityError` with a message naming the server flag to
        change when logprobs are missing or fewer than asked.
        """
        ...

    def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        """An async generator of token batches; `aclose()` on it aborts the trace."""
        ...

    async def aclose(self) -> None:
        """Release connections and engines. Idempotent."""
        ...


@runtime_checkable
class PushBackend(Protocol):
    """A backend that can hand a trace's batches to a callback as they arrive."""

    async def push(self, request: TraceRequest, consume: Callable[[TokenBatch], bool]) -> None:
        """Call `consume(batch)` with each batch `stream(request)` would yield, in order,
        until the stream ends or `consume` returns True (the trace is aborted on the server,
        as closing the stream does). Raises what the stream would; what `consume` raises
        comes out unchanged."""
        ...


async def deliver(
    backend: Backend, request: TraceRequest, consume: Callable[[TokenBatch], bool]
) -> None:
    """One trace's batches to `consume` (True: stop now): by `push` where the backend has
    it, else by reading `stream()`, which is the reference both must equal."""
    if isinstance(backend, PushBackend):
        await backend.push(request, consume)
        return
    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for batch in stream:
            if consume(batch):
                return
