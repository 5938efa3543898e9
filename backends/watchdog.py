"""A deadline that moves with progress and costs almost nothing to move: `Watchdog`.

A stream's next token is due `token_timeout` after the last one. Guarding every network read
with `asyncio.timeout_at(due)` is exact but costs a timer handle made and cancelled per read
(~10% of the client's CPU at one token per read). A `Watchdog` keeps one timer per stream:
moving the deadline is a float store (`dog.due = ...`), and the timer, when it fires before
the current `due`, re-arms itself at it. When it fires at or past `due` while the owner task
waits in a guarded read, it cancels that task, and `guarded()` turns the cancellation into
`TimeoutError`, as `asyncio.timeout` does (a cancellation from anyone else passes through).
A deadline that passed while the owner was elsewhere (suspended at a `yield`) cancels
nothing there: the next guarded read raises at once. `asyncio.timeout_at` around each read is
the slow reference the tests compare it with.

    dog = Watchdog(due)
    try:
        while True:
            raw = await dog.guarded(anext(reads))        # TimeoutError once due passes
            dog.due = loop.time() + token_timeout        # progress: the deadline moves
    finally:
        dog.close()
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Watchdog:
    """One stream's progress deadline (loop time); see the module docstring. Create it in
    the task whose reads it guards; `close()` it when the stream ends."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_task", "_waiting", "due")

    def __init__(self, due: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a Watchdog guards a task's reads"
        self._task = task
        self._cancelling = task.cancelling()
        self.due = due
        self._waiting = False  # the owner is inside guarded()
        self._fired = False  # this dog cancelled the owner
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self.due < math.inf:
            self._handle = self._loop.call_at(self.due, self._wake)

    def _wake(self) -> None:
        self._handle = None
        if self._loop.time() < self.due:
            self._arm()  # progress moved the deadline since this timer was set
        elif self._waiting and not self._fired:
            self._fired = True
            self._task.cancel()
        # else: the owner is not reading; its next guarded() read raises at once

    async def guarded(self, aw: Awaitable[T]) -> T:
        """Await `aw`; TimeoutError if `due` passes first (or has already passed)."""
        if self._loop.time() >= self.due:
            if hasattr(aw, "close"):
                aw.close()  # type: ignore[union-attr]  # never awaited: no warning
            raise TimeoutError
        if self._handle is None:
            self._arm()
        self._waiting = True
        try:
            return await aw
        except asyncio.CancelledError:
            if self._fired and self._task.uncancel() <= self._cancelling:
                self._fired = False
                raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
