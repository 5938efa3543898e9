"""deepconf/child_processes.py: a parent watching its workers wakes when one ends, not at
its next poll; reaped children are left out of the wait (their pidfds would stay readable
and turn the watch into a busy loop); without pidfds the wait is a plain sleep.

No assertion reads a clock: a wait that did not wake on the exit would hang for the
10-minute timeout, which the suite's own timeout turns into a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from deepconf import child_processes
from deepconf.child_processes import wait_for_an_exit

NEVER_S = 600.0  # longer than pytest-timeout's limit: a wait that sleeps it out fails


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)


needs_pidfd = pytest.mark.skipif(
    not hasattr(os, "pidfd_open"), reason="os.pidfd_open is Linux-only"
)


@needs_pidfd
def test_the_wait_ends_when_a_child_exits() -> None:
    """One child blocks on its stdin, the other reads it to the end: closing the second's
    stdin ends it, and the wait over both returns although its timeout is ten minutes."""
    blocked = child("import sys; sys.stdin.read()")
    ending = child("import sys; sys.stdin.read()")
    try:
        assert ending.stdin is not None
        ending.stdin.close()
        wait_for_an_exit([blocked, ending], NEVER_S)
        assert ending.wait() == 0
        assert blocked.poll() is None
    finally:
        blocked.kill()
        blocked.wait()


@needs_pidfd
def test_only_unreaped_children_are_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child already reaped (its exit code read) is not waited on: only the running
    child's pidfd reaches select, and every pidfd opened is closed again."""
    done = child("pass")
    done.wait()
    running = child("import sys; sys.stdin.read()")
    seen: list[list[int]] = []
    opened: list[int] = []
    real_open, real_select = os.pidfd_open, child_processes.select.select

    def pidfd_open(pid: int, *flags: Any) -> int:
        opened.append(real_open(pid, *flags))
        return opened[-1]

    def select(fds: list[int], *rest: Any) -> Any:
        seen.append(list(fds))
        return real_select(fds, [], [], 0)  # the running child never ends: do not wait

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    monkeypatch.setattr(child_processes.select, "select", select)
    try:
        wait_for_an_exit([done, running], NEVER_S)
    finally:
        running.kill()
        running.wait()
    assert seen == [opened] and len(opened) == 1
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed


def test_without_pidfds_the_wait_sleeps_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel or sandbox that refuses pidfd_open: no error, the wait sleeps (here 10 ms)."""
    slept: list[float] = []

    def refused(pid: int, *flags: Any) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused, raising=False)
    monkeypatch.setattr(child_processes.time, "sleep", slept.append)
    running = child("import sys; sys.stdin.read()")
    try:
        wait_for_an_exit([running], 0.01)
    finally:
        running.kill()
        running.wait()
    assert slept == [0.01]
