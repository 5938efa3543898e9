"""The Watchdog (backends/watchdog.py) against its slow reference, `asyncio.timeout_at`
around every read: the same reads with the same gaps give the same items and time out at
the same read; progress moves the deadline; a cancellation from outside passes through; a
deadline that passes while the reader is elsewhere raises at its next read."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from deepconf.backends.watchdog import Watchdog

TIMEOUT = 0.15  # seconds without progress before a read times out


async def reads(gaps: list[float]) -> AsyncIterator[int]:
    """Item i arrives gaps[i] seconds after item i-1 was taken."""
    for i, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield i


async def with_reference(gaps: list[float]) -> tuple[list[int], bool]:
    """(items read, timed out): asyncio.timeout_at around every read."""
    loop, got = asyncio.get_running_loop(), []
    due = loop.time() + TIMEOUT
    it = reads(gaps)
    try:
        while True:
            try:
                async with asyncio.timeout_at(due):
                    got.append(await anext(it))
            except StopAsyncIteration:
                return got, False
            due = loop.time() + TIMEOUT
    except TimeoutError:
        return got, True
    finally:
        await it.aclose()


async def with_watchdog(gaps: list[float]) -> tuple[list[int], bool]:
    loop, got = asyncio.get_running_loop(), []
    dog = Watchdog(loop.time() + TIMEOUT)
    it = reads(gaps)
    try:
        while True:
            try:
                got.append(await dog.guarded(anext(it)))
            except StopAsyncIteration:
                return got, False
            dog.due = loop.time() + TIMEOUT
    except TimeoutError:
        return got, True
    finally:
        dog.close()
        await it.aclose()


@pytest.mark.parametrize(
    "gaps",
    [
        [0.0] * 50,  # a fast stream: never times out
        [0.05] * 8,  # 0.4 s in all, each gap well inside the timeout: progress moves it
        [0.0, 0.05, 0.4, 0.0],  # stalls at the third read
        [0.4],  # no first item
        [],
    ],
)
async def test_the_watchdog_reads_and_times_out_as_timeout_at_does(gaps: list[float]) -> None:
    assert await with_watchdog(gaps) == await with_reference(gaps)


async def test_a_cancellation_from_outside_is_not_a_timeout() -> None:
    task = asyncio.create_task(with_watchdog([5.0]))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_deadline_passed_outside_a_read_raises_at_the_next_read() -> None:
    """The owner is busy elsewhere (a consumer holding the stream) when the deadline passes:
    nothing is cancelled there, and its next read raises at once."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(loop.time() + 0.02)
    await asyncio.sleep(0.1)  # not a guarded read: this sleep is not interrupted
    pending = asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await dog.guarded(pending)
    dog.close()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_timeout_leaves_the_task_uncancelled_for_its_next_await() -> None:
    loop = asyncio.get_running_loop()
    dog = Watchdog(loop.time() + 0.02)
    with pytest.raises(TimeoutError):
        await dog.guarded(asyncio.sleep(5))
    dog.close()
    await asyncio.sleep(0.01)  # not cancelled
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------


async def test_a_finite_deadline_after_an_infinite_one_is_kept() -> None:
    """A dog made with no deadline (inf: no token or trace timeout) arms its timer at the
    first guarded read after the deadline became finite: moving it is still a float store."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(math.inf)
    dog.due = loop.time() + 0.02
    with pytest.raises(TimeoutError):
        await dog.guarded(asyncio.sleep(5))  # without the timer: 5 s, then no TimeoutError
    dog.close()


async def test_a_watchdog_times_out_again_after_its_deadline_moves() -> None:
    """As with asyncio.timeout, a dog that timed out can be moved and time out again."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(loop.time() + 0.02)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await dog.guarded(asyncio.sleep(5))
        dog.due = loop.time() + 0.02
    dog.close()


async def test_a_deadline_passing_after_a_read_cancels_nothing_outside_reads() -> None:
    """After a read returned, the owner is elsewhere: the deadline passing there cancels
    nothing, and the next read raises at once."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(loop.time() + 0.5)  # the first read takes one loop turn
    assert await dog.guarded(asyncio.sleep(0, "first")) == "first"
    await asyncio.sleep(0.6)  # past the deadline, not in a read: not interrupted
    with pytest.raises(TimeoutError):
        await dog.guarded(asyncio.sleep(0))
    dog.close()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_read_refused_at_once_is_closed_not_left_unawaited() -> None:
    """A read past the deadline is never awaited: the coroutine is closed, so Python does
    not warn that it was never awaited."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(loop.time() - 1.0)
    read = asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await dog.guarded(read)
    assert read.cr_frame is None  # closed (an unstarted coroutine still has its frame)
    dog.close()
