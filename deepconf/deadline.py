"""Bounded CPU work on any thread: `run_within(seconds, fn, *args)` runs `fn` in the calling
thread and interrupts it at the deadline with TimeoutError.

It exists for math-verify (sympy), whose cost on a short answer can reach seconds (measured
here: verifying ``(x+1)^{99}(x-1)^{99}`` against ``3`` took 2.2 s) and whose callers sit on the
event loop (the controller's vote, `deepconf serve`'s answer). Why not math-verify's own
timeout: it uses signal.alarm, which works on the main thread only, and the loop may run
anywhere (the tests run servers in threads). Why not a worker thread or process: the callers
are synchronous, and parsed answers live in this process.

How: one watchdog thread keeps the armed deadlines; at a deadline it raises `_Overrun` in the
late thread (CPython's PyThreadState_SetAsyncExc). The exception arrives between two
bytecodes, so pure-Python work stops within milliseconds; one long C call (a huge integer
power) runs to its end first, which is why deepconf.answers still refuses such inputs before
parsing. `_Overrun` derives from BaseException so that an `except Exception` inside the
library does not swallow it, and it is sent again every REFIRE seconds until the call returns.
What it does not do: bound memory, or interrupt I/O. Do not nest calls in one thread.

    try:
        parsed = run_within(0.2, parse, text)
    except TimeoutError:
        parsed = None
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

REFIRE = 0.05  # seconds between two interruptions of a call that swallowed the first


class _Overrun(BaseException):
    """Raised inside a call that ran past its deadline; never leaves run_within."""


def run_within(seconds: float, fn: Callable[..., T], *args: object) -> T:
    """fn(*args), or TimeoutError once it has run `seconds` (wall clock)."""
    if not seconds > 0:  # an arm already due could fire before the try below is entered
        raise TimeoutError("no time left")
    arm = _WATCHDOG.arm(seconds)
    try:
        try:
            result = fn(*args)
        finally:
            fired = _WATCHDOG.disarm(arm)
    except _Overrun:
        raise TimeoutError(f"stopped after {seconds:g} s") from None
    if fired:  # interrupted, but something inside caught it: the result is not to be trusted
        raise TimeoutError(f"stopped after {seconds:g} s")
    return result


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    # None clears an exception still pending in that thread (ctypes passes None as NULL).
    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj)


@dataclass(eq=False)
class _Arm:
    thread: int  # threading.get_ident() of the caller
    deadline: float  # time.monotonic()
    done: bool = False  # the call returned: never interrupt it again
    fired: bool = False  # an interruption was sent


class _Watchdog:
    """The armed deadlines, earliest first, and the thread that enforces them.

    Invariant: an interruption is only sent while holding the lock and only to an arm that
    is not done; `disarm` marks the arm done and clears any pending interruption under that
    same lock, so none can land after run_within returned."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Arm]] = []
        self._order = itertools.count()  # ties in the heap never compare arms
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> _Arm:
        arm = _Arm(threading.get_ident(), time.monotonic() + seconds)
        with self._cond:
            heapq.heappush(self._heap, (arm.deadline, next(self._order), arm))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="deepconf-deadline", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return arm

    def disarm(self, arm: _Arm) -> bool:
        """Mark the call finished; True if it was interrupted."""
        while True:
            try:
                with self._cond:
                    arm.done = True
                    if arm.fired:
                        _raise_in(arm.thread, None)
                return arm.fired
            except _Overrun:
                # It landed here, before the clear: go round, which clears and returns.
                continue

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, arm = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                arm.fired = True
                _raise_in(arm.thread, _Overrun)
                heapq.heappush(self._heap, (now + REFIRE, next(self._order), arm))


_WATCHDOG = _Watchdog()
