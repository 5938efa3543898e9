"""Suite-wide hygiene. Per-area fixtures live beside their tests; helpers in tests/support."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from deepconf import deadline

# An answer whose comparison ran past its CPU time leaves its worker thread running on
# (Python cannot stop a thread), and while deadline.MAX_ABANDONED of them run, every new
# comparison is refused at once, so equal answers written differently stay apart. Under
# load those workers outlive the test that started them (a 2 s sympy call took over 10 s
# beside three CPU burners) and a later test's vote split 0.5 from \frac{1}{2}. Each test
# therefore starts with none running: the one that left them waits for them to end.
ABANDONED_HANG_S = 300.0  # a comparison that never ends (a hang), not a slow machine


@pytest.fixture(autouse=True)
def no_abandoned_comparisons() -> Iterator[None]:
    yield
    end = time.monotonic() + ABANDONED_HANG_S
    while deadline.running_abandoned():
        assert time.monotonic() < end, "a comparison left running has not ended: a hang"
        time.sleep(0.01)
