"""One streamed response read into token batches: `ResponseReader`, pulled or pushed.

A reader turns the bytes of one response into `TokenBatch`es: SSE framing and decoding
(backends/sse.py), the stream's audit (backends/stream_audit.py), and the progress deadline
(backends/watchdog.py: the next token is due `token_timeout` after the last one, and the
trace's wall-clock deadline bounds it all). It reads in one of two ways, with the same
batches, errors and audit:

- `pull()`: an async generator over httpx's `aiter_bytes()`. Every read is a task step
  through the chain of generators from the transport to the consumer (~50 us of CPU at one
  token per read); it works with any transport and content encoding. The reference.
- `push()`: the consumer's `consume(batch)` is called from the transport's read callback
  (backends/h1_transport.py `PushBody.pump`), so a read that brings tokens costs the decode
  and the consumer's own work, and the consumer's task sleeps until the stream ends, its
  consumer stops it, or it fails. Only for this package's HTTP/1.1 transport, plain bodies.

Both stop at [DONE], then read the body's end (so the connection can be reused), decode an
event left unterminated, and end the audit; a consumer that stops (a prune) skips all that.

    reader = ResponseReader(url, k, timing, audit, confirmed)
    async for batch in reader.pull(response): ...              # or:
    await reader.push(response, body, consume)                  # consume(batch) -> stop?
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from deepconf.backend import TokenBatch
from deepconf.backends.h1_transport import PushBody
from deepconf.backends.http_errors import HttpErrors
from deepconf.backends.sse import Decoded, decode_payloads
from deepconf.backends.sse_framing import SSEDecoder
from deepconf.backends.stream_audit import StreamAudit
from deepconf.backends.watchdog import Watchdog
from deepconf.errors import StreamError

# After [DONE] the body's end (the chunked terminator, often a write of its own) follows at
# once; reading it lets the connection go back to the pool instead of being closed, which at
# fleet scale would mean a new TCP connection (and a TIME_WAIT socket) per trace. A server
# that holds the body open after [DONE] costs a trace this much, then is closed as before.
END_AFTER_DONE_S = 0.5


@dataclass(frozen=True, slots=True)
class ReadTiming:
    """A response's deadlines: loop time of the trace's wall-clock end (inf: none), and the
    settings that word a stall."""

    deadline: float
    token_timeout: float
    trace_timeout: float | None
    max_event_bytes: int


class ConsumerRaised(Exception):
    """What `consume` raised inside a push, carried past the backend's own error handling
    (which must not take a consumer's error for the stream's); `push` callers unwrap it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class ResponseReader:
    """One response's bytes to batches; see the module docstring."""

    def __init__(
        self,
        url: str,
        k: int,
        timing: ReadTiming,
        audit: StreamAudit | None,
        confirmed: Callable[[int], None],
        first: Callable[[], None],
    ) -> None:
        self.url, self.k, self.timing, self.audit = url, k, timing, audit
        self._confirmed = confirmed  # the audit confirmed k at a full position
        self._first = first  # called once, before the first batch is handed on
        self._sse = SSEDecoder(timing.max_event_bytes)
        self._loop = asyncio.get_running_loop()
        self._dog: Watchdog | None = None
        self.tokens = 0
        self.done = False  # [DONE] arrived
        self.delivered = False  # a batch was handed on (a retry is no longer possible)

    # -- the two ways to read -----------------------------------------------------------

    async def pull(self, response: httpx.Response) -> AsyncIterator[TokenBatch]:
        """Batches of the response, one task step per read (the reference path)."""
        with HttpErrors(self.url):
            async with contextlib.aclosing(response.aiter_bytes()) as reads:
                dog = self._watch()
                try:
                    while not self.done:
                        try:
                            raw = await dog.guarded(anext(reads))
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise self._stalled() from None
                        batch = self._take(raw)
                        if batch is not None:
                            yield self._handed(batch)
                    if self.done:
                        await _read_to_the_end(reads)
                finally:
                    dog.close()
        batch = self._tail()
        if batch is not None:
            yield self._handed(batch)

    async def push(
        self, response: httpx.Response, body: PushBody, consume: Callable[[TokenBatch], bool]
    ) -> bool:
        """Hand each batch to `consume` as its bytes arrive; True when `consume` stopped the
        stream (returned True), False when it ended. What `consume` raises comes out as
        `ConsumerRaised`."""
        stopped = False

        def sink(raw: bytes) -> bool:
            nonlocal stopped
            batch = self._take(raw)
            if batch is not None:
                stopped = _consumed(consume, self._handed(batch))
            return stopped or self.done

        with HttpErrors(self.url):
            dog = self._watch()
            try:
                await dog.guarded(body.pump(sink))
            except TimeoutError:
                raise self._stalled() from None
            finally:
                dog.close()
            if stopped:
                return True
            if self.done:
                await _read_to_the_end(response.aiter_raw())
        batch = self._tail()
        return batch is not None and _consumed(consume, self._handed(batch))

    def end(self, busy: bool) -> None:
        """The stream ended without its consumer stopping it: judge it (StreamError when it
        cannot count). `busy`: other streams were in flight beside it."""
        if self.audit is not None:
            self.audit.end(done=self.done, busy=busy)

    # -- the steps both share ---------------------------------------------------------------

    def _watch(self) -> Watchdog:
        t = self.timing
        self._dog = Watchdog(min(self._loop.time() + t.token_timeout, t.deadline))
        return self._dog

    def _take(self, raw: bytes) -> TokenBatch | None:
        return self._decoded(decode_payloads(self._sse.feed(raw), self.k, self.tokens))

    def _tail(self) -> TokenBatch | None:
        """An event left unterminated when the body ended without [DONE]."""
        if self.done:
            return None
        return self._decoded(decode_payloads(self._sse.flush(), self.k, self.tokens))

    def _decoded(self, decoded: Decoded) -> TokenBatch | None:
        self.done = decoded.done
        n = decoded.top_logprobs.shape[0]
        if n:
            self.tokens += n
            if self._dog is not None:
                t = self.timing
                self._dog.due = min(self._loop.time() + t.token_timeout, t.deadline)
        audit = self.audit
        if audit is not None:
            audit.take(decoded)
            if audit.k_confirmed:
                self._confirmed(audit.k)
        if not (n or decoded.text or decoded.reasoning or decoded.finish_reason or decoded.usage):
            return None  # a read that ended mid-event, a comment, an empty event
        return TokenBatch(
            decoded.top_logprobs,
            decoded.text,
            decoded.reasoning,
            decoded.finish_reason,
            decoded.usage,
            token_conf=decoded.token_conf,
        )

    def _handed(self, batch: TokenBatch) -> TokenBatch:
        if not self.delivered:
            self.delivered = True
            self._first()
        return batch

    def _stalled(self) -> StreamError:
        t = self.timing
        if self._dog is not None and self._dog.due == t.deadline and t.deadline < math.inf:
            return StreamError(
                f"the trace from {self.url} ran past its wall-clock limit of"
                f" {t.trace_timeout:g} s (--trace-timeout) after {self.tokens} tokens"
            )
        return StreamError(
            f"no token from {self.url} for {t.token_timeout:g} s after {self.tokens} tokens"
            " (--timeout): the server stalled (keep-alive comments and empty events do not"
            " count as progress)"
        )


def _consumed(consume: Callable[[TokenBatch], bool], batch: TokenBatch) -> bool:
    try:
        return consume(batch)
    except Exception as exc:
        raise ConsumerRaised(exc) from exc


async def _read_to_the_end(reads: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (ignored) until the body ends, for END_AFTER_DONE_S at most,
    so the connection can be reused. The trace is complete already: nothing here fails it."""
    with contextlib.suppress(StopAsyncIteration, TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(END_AFTER_DONE_S):
            while True:
                await anext(reads)
