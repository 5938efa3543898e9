"""A serve-model engine held in lockstep with the client that reads it: a test gate.

serve-model's engine thread decodes on its own, whatever the HTTP side does. So when a client
closes a stream (a pruned trace), the server may have generated many more tokens for it, or
even finished it, before it notices; how many depends on thread scheduling, and a test that
counts aborted requests or generated tokens then depends on timing (one did: it failed once in
three full runs). The gate removes that race by construction. Before each decode step the
engine waits until every running request is at most `lead` tokens ahead of what the client
has received for it (requests are matched by seed: trace i of a solve has seed s + i), or
until the server has posted that request's abort. A request the client closes therefore gets
at most received + lead + 1 tokens, and cannot run to its max_tokens unnoticed.

    gate = Lockstep(lead=2)
    gate.install(async_engine)                    # the server's engine, before any request
    backend = gate.counting(backend)              # the client's backend reports what arrives

The wait is a hang guard, not a measurement: it fails the engine's requests (and so the test)
only when a request is held for `hang_s` seconds, which happens only if the client stopped
reading a stream without closing it, the very bug the gate's tests look for.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from deepconf.backend import Backend, TokenBatch, TraceRequest


class Lockstep:
    def __init__(self, lead: int = 2, hang_s: float = 120.0) -> None:
        self.lead = lead
        self.hang_s = hang_s
        self._cond = threading.Condition()
        self._received: dict[int | None, int] = defaultdict(int)  # seed -> tokens received
        self._aborted: set[str] = set()  # request ids whose abort the server posted

    def install(self, async_engine: Any) -> None:
        """Gate `async_engine`'s decode steps and watch the aborts it is sent."""
        engine = async_engine.engine
        step, post = engine.step, async_engine._post

        def gated_step() -> Any:
            with self._cond:
                if not self._cond.wait_for(lambda: self._may_step(engine), self.hang_s):
                    raise AssertionError("a request was held: its client neither read nor closed")
            return step()

        def recording_post(command: tuple[str, str, Any]) -> None:
            if command[0] == "abort":
                with self._cond:
                    self._aborted.add(command[1])
                    self._cond.notify_all()
            post(command)

        engine.step = gated_step
        async_engine._post = recording_post

    def _may_step(self, engine: Any) -> bool:
        # Runs on the engine thread, the only one that touches its sequences.
        return all(
            rid in self._aborted or seq.generated < self._received[seq.params.seed] + self.lead
            for rid, seq in engine._running.items()
        )

    def received(self, seed: int | None, tokens: int) -> None:
        with self._cond:
            self._received[seed] += tokens
            self._cond.notify_all()

    def counting(self, backend: Backend) -> Backend:
        return _Counting(backend, self)


class _Counting:
    """A Backend that reports each batch's tokens to the gate as they arrive."""

    def __init__(self, inner: Backend, gate: Lockstep) -> None:
        self.inner, self.gate = inner, gate

    @property
    def model(self) -> str:
        return self.inner.model

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        async with contextlib.aclosing(self.inner.stream(request)) as stream:
            async for batch in stream:
                self.gate.received(request.seed, batch.n_tokens)
                yield batch
