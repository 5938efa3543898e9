"""deepconf.deadline.run_within: CPU work on any thread stops at its deadline, and the
interruption never lands anywhere but inside the call it was meant for."""

from __future__ import annotations

import threading
import time

import pytest

from deepconf.deadline import REFIRE, run_within


def _spin_forever() -> None:
    while True:
        pass


def _swallow_everything() -> int:
    """A library that catches too much: only the repeated interruption gets it out."""
    caught = 0
    while True:
        try:
            while True:
                pass
        except Exception:
            caught += 1
        except BaseException:
            caught += 1
            if caught >= 3:
                return caught


def test_a_call_that_never_ends_is_stopped() -> None:
    """An endless pure-Python loop ends with TimeoutError instead of holding the thread."""
    with pytest.raises(TimeoutError):
        run_within(0.05, _spin_forever)


def test_a_call_that_swallows_the_interruption_is_still_refused() -> None:
    """A call that catches BaseException and returns a value anyway is not trusted: its
    result is refused with TimeoutError (it was interrupted, so the value may be half made)."""
    with pytest.raises(TimeoutError):
        run_within(0.05, _swallow_everything)


def test_a_quick_call_returns_its_value_and_errors_pass_through() -> None:
    """Within the deadline run_within is the call itself: value out, exceptions out."""
    assert run_within(5.0, sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        run_within(5.0, divmod, 1, 0)
    with pytest.raises(TimeoutError):
        run_within(0.0, sum, [1])  # no time at all: refused before it starts


def test_no_interruption_lands_after_the_call_returned() -> None:
    """Many calls end right at their deadline (some interrupted, some just done); afterwards
    the thread runs plain code for several re-fire periods and nothing reaches it. A stray
    interruption would raise here, outside any run_within, and fail the test."""
    outcomes = {"value": 0, "timeout": 0}

    def near_deadline(n: int) -> int:
        x = 0
        for i in range(n):
            x += i
        return x

    for n in range(0, 400_000, 2_000):
        try:
            run_within(0.002, near_deadline, n)
            outcomes["value"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
    busy_until = time.monotonic() + 4 * REFIRE
    while time.monotonic() < busy_until:  # pure bytecode: where a stray one would land
        sum(range(100))
    assert outcomes["value"] + outcomes["timeout"] == 200


def test_deadlines_are_per_thread() -> None:
    """Two threads: the one past its deadline is stopped, the other finishes its work."""
    results: dict[str, object] = {}

    def slow() -> None:
        try:
            run_within(0.05, _spin_forever)
        except TimeoutError as exc:
            results["slow"] = exc

    def fast() -> None:
        results["fast"] = run_within(30.0, lambda: sum(range(2_000_000)))

    threads = [threading.Thread(target=slow), threading.Thread(target=fast)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["slow"], TimeoutError)
    assert results["fast"] == sum(range(2_000_000))
