"""Wait for a state another thread reaches, without betting on how long it takes.

A test that sleeps a fixed time, or polls for a fixed second, passes on an idle machine and
fails on a loaded one. These poll until the state holds; their bound is there only so a
regression fails with a message instead of hanging the suite, and is far above any wait a
working build needs (the engine thread aborts within a step or two).

    await until(lambda: engine.stats.aborted == 1, "the engine aborted the request")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

HANG_BOUND_S = 60.0  # a hang, not a slow machine


async def until(predicate: Callable[[], bool], what: str, *, bound: float = HANG_BOUND_S) -> None:
    """Return once `predicate()` holds; AssertionError naming `what` after `bound` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {bound:.0f} s: {what}")
        await asyncio.sleep(0.005)
