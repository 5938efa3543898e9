"""`saturated_deadline_pool()`: deepconf.deadline as it is when earlier comparisons ran past
their time and still run (MAX_ABANDONED of them), so every new one is refused at once. Made
with calls that spin until released, not with slow sympy answers, so it holds exactly as
long as the `with` block."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from deepconf import deadline

HANG_S = 60.0  # a spinner that ignores its release: a hang, not a slow machine


def _spin_until(release: threading.Event) -> None:
    while not release.is_set():
        sum(range(1000))


@contextlib.contextmanager
def saturated_deadline_pool() -> Iterator[None]:
    release = threading.Event()
    try:
        while deadline.running_abandoned() < deadline.MAX_ABANDONED:
            # Given up on after 0.01 s of CPU, and still spinning: one more abandoned call.
            with contextlib.suppress(TimeoutError):
                deadline.run_within(0.01, _spin_until, release)
        yield
    finally:
        release.set()
        # The spinners end at once; the pool takes calls again when their threads retire.
        end = time.monotonic() + HANG_S
        while deadline.running_abandoned():
            assert time.monotonic() < end, "the spinners did not end when released"
            time.sleep(0.005)
