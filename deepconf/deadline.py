"""Bounded CPU work for synchronous callers: `run_within(seconds, fn, *args)` runs `fn` on a
worker thread and waits until it returns or has used `seconds` of CPU time (TimeoutError).

It exists for math-verify (sympy), whose cost on a short answer can reach seconds (measured
here: verifying ``(x+1)^{99}(x-1)^{99}`` against ``3`` took 2.2 s) and whose callers sit on
the event loop (the controller's vote, `deepconf serve`'s answer), synchronously. Why not
math-verify's own timeout: it uses signal.alarm, which works on the main thread only, and the
loop may run anywhere (the tests run servers in threads). Why not interrupt the caller's own
thread (PyThreadState_SetAsyncExc, tried first): the exception lands at any bytecode, and one
that lands just after a library took a lock (logging, importlib) leaves it held for ever; a
test run deadlocked that way.

So the work moves to a worker and the caller only waits (the GIL is free meanwhile, so the
worker runs at full speed). Time is the worker's own CPU clock (Linux: pthread_getcpuclockid;
elsewhere the wall clock), so a machine busy with other work does not cut a call short: an
answer compares the same way under load. A call past its time is abandoned: its worker runs
on alone (Python cannot stop a thread) and is never reused; while MAX_ABANDONED such workers
are still running, calls fail at once instead of adding more. Costs ~50 us per call.

    try:
        parsed, cpu_seconds = run_within(0.25, parse, text)
    except TimeoutError:
        parsed = None
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ABANDONED = 2  # workers still running calls nobody waits for
MAX_IDLE = 4  # finished workers kept for the next calls
POLL = 0.01  # seconds between two looks at a running call's CPU time


def run_within(seconds: float, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """(fn(*args), the CPU seconds it used), or TimeoutError once it has used `seconds`
    (or at once while too many earlier calls run on abandoned). fn's exceptions pass through."""
    if not seconds > 0:
        raise TimeoutError("no time left")
    worker = _POOL.take()
    call = _Call(fn, args)
    worker.inbox.put(call)
    while not call.finished.wait(min(POLL, seconds)):
        if call.cpu_used() >= seconds:
            _POOL.abandon(worker)
            raise TimeoutError(f"stopped waiting after {seconds:g} s of CPU time")
    _POOL.give_back(worker)
    if call.error is not None:
        raise call.error
    return call.result, call.cpu_seconds


class _Call:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.finished = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.clock: int | None = None  # the worker's CPU clock, set when it starts the call
        self.started = 0.0  # that clock's reading then
        self.picked = False  # the worker has started it (clock and started are set)
        self.cpu_seconds = 0.0  # what it used, once finished

    def cpu_used(self) -> float:
        if not self.picked:
            return 0.0
        try:
            return _read(self.clock) - self.started
        except OSError:  # the worker is gone
            return 0.0

    def run(self) -> None:
        self.clock = _own_clock()
        self.started = _read(self.clock)
        self.picked = True
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the caller, who re-raises it
            self.error = exc
        finally:
            self.cpu_seconds = self.cpu_used()
            self.finished.set()


class _Worker:
    def __init__(self, pool: _Pool) -> None:
        self.inbox: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.retire = False  # end the thread after the current call
        thread = threading.Thread(target=self._serve, args=(pool,), daemon=True)
        thread.name = "deepconf-deadline"
        thread.start()

    def _serve(self, pool: _Pool) -> None:
        while True:
            self.inbox.get().run()
            if self.retire or pool.retired(self):
                return


class _Pool:
    """Idle workers to reuse and abandoned ones still running (counted, not reused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._abandoned: set[_Worker] = set()

    def take(self) -> _Worker:
        with self._lock:
            if len(self._abandoned) >= MAX_ABANDONED:
                raise TimeoutError(
                    f"{len(self._abandoned)} earlier calls are still running past their time"
                )
            if self._idle:
                return self._idle.pop()
        return _Worker(self)

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(worker)
                return
        worker.retire = True  # one too many idle: let its thread end
        worker.inbox.put(_Call(_nothing, ()))

    def abandon(self, worker: _Worker) -> None:
        with self._lock:
            self._abandoned.add(worker)

    def retired(self, worker: _Worker) -> bool:
        """Called by a worker after each call: True if its thread should end now."""
        with self._lock:
            if worker in self._abandoned:
                self._abandoned.discard(worker)
                return True
        return False


def running_abandoned() -> int:
    """How many calls given up on are still running (new calls fail at MAX_ABANDONED)."""
    with _POOL._lock:
        return len(_POOL._abandoned)


def _nothing() -> None:
    pass


def _own_clock() -> int | None:
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):  # no per-thread clocks on this platform
        return None


def _read(clock: int | None) -> float:
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


_POOL = _Pool()
