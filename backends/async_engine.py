"""AsyncEngine: the sync `Engine` stepped by one background thread, bridged to asyncio.

The thread owns the engine: event-loop code never touches it directly but posts commands
(add, abort) that the thread applies between steps, so an abort takes effect before the next
decode. Each step's outputs go back to the waiting coroutines with one
`loop.call_soon_threadsafe` per event loop per step. It does not know HTTP or the Backend
interface (see `model_server` and `bundled`).

    engine = AsyncEngine(Engine(model, tokenizer, max_batch=64))
    async for outputs in engine.generate(prompt_ids, SamplingParams(seed=1)):
        for out in outputs:            # every output that arrived since the last iteration
            print(out.text, end="")
    engine.close()

Closing the async generator early (``aclose()``, a cancelled task, a dropped client) aborts the
request at the next step and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from deepconf.backends.engine import Engine, EngineStats, SamplingParams, StepOutput
from deepconf.errors import BackendError

__all__ = ["AsyncEngine"]

_ids = itertools.count()


class _Stream:
    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[list[StepOutput] | BaseException] = asyncio.Queue()


class AsyncEngine:
    """One stepping thread over an `Engine`; `generate` is safe from any event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._commands: list[tuple[str, str, Any]] = []
        self._streams: dict[str, _Stream] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="deepconf-engine", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[list[StepOutput]]:
        """Yield lists of outputs (one per generated token) until the request finishes."""
        request_id = request_id or f"req-{next(_ids)}"
        stream = _Stream(asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise BackendError("the engine is closed; create a new backend")
            self._streams[request_id] = stream
            self._commands.append(("add", request_id, (list(prompt_ids), params)))
            self._cond.notify()
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                # Drain what else arrived so a slow consumer gets tokens in bulk.
                while not stream.queue.empty():
                    more = stream.queue.get_nowait()
                    if isinstance(more, BaseException):
                        raise more
                    item.extend(more)
                finished = item[-1].finish_reason is not None
                yield item
        finally:
            if not finished:
                self._post(("abort", request_id, None))

    def abort(self, request_id: str) -> None:
        self._post(("abort", request_id, None))

    def close(self) -> None:
        """Stop the thread; requests still running get a BackendError. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    # -- the stepping thread ----------------------------------------------------------------

    def _post(self, command: tuple[str, str, Any]) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._commands or self.engine.has_work):
                    self._cond.wait()
                if self._closed:
                    break
                commands, self._commands = self._commands, []
            self._apply(commands)
            if not self.engine.has_work:
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a model bug must fail the requests, not hang them
                self._fail_all(BackendError(f"the engine failed while decoding: {exc!r}"))
                continue
            self._dispatch(outputs)
        self._fail_all(BackendError("the engine was closed while the request was running"))

    def _apply(self, commands: list[tuple[str, str, Any]]) -> None:
        for kind, request_id, payload in commands:
            if kind == "abort":
                self.engine.abort(request_id)
                with self._cond:
                    self._streams.pop(request_id, None)
                continue
            with self._cond:
                stream = self._streams.get(request_id)
            if stream is None:  # aborted before it was added
                continue
            try:
                self.engine.add_request(request_id, *payload)
            except Exception as exc:  # bad prompt: tell that request only
                self._deliver(stream, exc)
                with self._cond:
                    self._streams.pop(request_id, None)

    def _dispatch(self, outputs: list[StepOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, list[StepOutput]]]]
        by_loop = defaultdict(list)
        with self._cond:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue
                if out.finish_reason is not None:
                    del self._streams[out.request_id]
                by_loop[stream.loop].append((stream, [out]))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for _, outs in items:
                    self._post(("abort", outs[0].request_id, None))

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            streams, self._streams = self._streams, {}
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            self._deliver(stream, error)

    @staticmethod
    def _deliver(stream: _Stream, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the consumer is gone
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _put_all(items: list[tuple[_Stream, list[StepOutput]]]) -> None:
    for stream, outs in items:
        stream.queue.put_nowait(outs)
