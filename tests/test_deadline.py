"""deepconf.deadline.run_within: a synchronous caller waits for CPU work at most its time,
whatever thread it is on; time is the work's CPU time, not the wall clock; calls left running
past their time are counted and capped."""

from __future__ import annotations

import threading
import time

import pytest

from deepconf import deadline
from deepconf.deadline import run_within


def _spin_until(release: threading.Event) -> str:
    """CPU-bound until released (a test must not leave a thread spinning for ever)."""
    while not release.is_set():
        sum(range(1000))
    return "released"


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def test_a_call_past_its_cpu_time_is_given_up_on() -> None:
    """A call that would spin for ever: the caller gets TimeoutError; the abandoned worker is
    counted until its call ends, then forgotten."""
    assert _wait_until(lambda: not deadline._POOL._abandoned)  # other tests' calls ended
    release = threading.Event()
    try:
        with pytest.raises(TimeoutError):
            run_within(0.05, _spin_until, release)
        assert len(deadline._POOL._abandoned) == 1
    finally:
        release.set()
    assert _wait_until(lambda: not deadline._POOL._abandoned)


def test_time_is_cpu_time_not_the_wall_clock() -> None:
    """A call that waits (sleeps) ten times longer than its limit uses no CPU, so it is not
    cut short: a busy machine, which stretches wall time the same way, does not change
    answers either."""
    value, cpu = run_within(0.02, lambda: time.sleep(0.2) or "slept")
    assert value == "slept" and cpu < 0.02


def test_a_quick_call_returns_its_value_and_errors_pass_through() -> None:
    """Within its time run_within is the call itself: value out, exceptions out."""
    assert run_within(5.0, sum, [1, 2, 3])[0] == 6
    with pytest.raises(ZeroDivisionError):
        run_within(5.0, divmod, 1, 0)
    with pytest.raises(TimeoutError):
        run_within(0.0, sum, [1])  # no time at all: refused before it starts


def test_too_many_abandoned_calls_make_new_ones_fail_at_once() -> None:
    """With MAX_ABANDONED calls still running, the next call fails without starting (no
    unbounded pile of spinning threads); once they end, calls run again."""
    assert _wait_until(lambda: not deadline._POOL._abandoned)  # other tests' calls ended
    release = threading.Event()
    try:
        for _ in range(deadline.MAX_ABANDONED):
            with pytest.raises(TimeoutError):
                run_within(0.02, _spin_until, release)
        started: list[int] = []
        with pytest.raises(TimeoutError, match="still running"):
            run_within(5.0, started.append, 1)
        assert started == []
    finally:
        release.set()
    assert _wait_until(lambda: not deadline._POOL._abandoned)
    assert run_within(5.0, sum, [4, 5])[0] == 9


def test_callers_on_different_threads_have_their_own_deadlines() -> None:
    """Two threads at once: the one whose call runs past its time gets TimeoutError, the
    other's long but allowed call finishes with its value."""
    assert _wait_until(lambda: not deadline._POOL._abandoned)  # other tests' calls ended
    results: dict[str, object] = {}
    release = threading.Event()

    def slow() -> None:
        try:
            run_within(0.05, _spin_until, release)
        except TimeoutError as exc:
            results["slow"] = exc
        release.set()

    def fast() -> None:
        results["fast"] = run_within(60.0, lambda: sum(range(2_000_000)))[0]

    threads = [threading.Thread(target=slow), threading.Thread(target=fast)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["slow"], TimeoutError)
    assert results["fast"] == sum(range(2_000_000))
    assert _wait_until(lambda: not deadline._POOL._abandoned)
