"""deepconf/child_processes.py: a parent watching its workers wakes when one ends, not at
its next poll; reaped children are left out of the wait (their pidfds would stay readable
and turn the watch into a busy loop); without pidfds the wait is a plain sleep.

No assertion reads a clock: a wait that did not wake on the exit would hang for the
10-minute timeout, which the suite's own timeout turns into a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
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


# --- fork_child: a fork that starts as a new interpreter would --------------------------------

# Run in a process of its own: pytest's may hold threads, and a parent with threads never
# forks (fork_child starts a new interpreter instead). `how` is "fork" or "start".
PARENT_SCRIPT = """
import json, socket, subprocess, sys
from deepconf.child_processes import can_fork, fork_child, start_child, terminate_as_interrupt

how, log_path, *args = sys.argv[1:]
listener = None
if args == ["SOLVE"]:  # a server that takes the connection and never answers
    listener = socket.create_server(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d/v1" % listener.getsockname()[1]
    args = ["solve", "--base-url", url, "--model", "m", "--no-probe", "what is 6 x 7?"]
with open(log_path, "wb") as log, terminate_as_interrupt():
    sys.stdout.write("the parent's unflushed line")
    forked = how == "fork" and can_fork()
    if how == "fork":
        child = fork_child(args, log, name="deepconf test")
    else:
        child = start_child(args, stdout=log, stderr=subprocess.STDOUT)
    if listener is not None:
        listener.settimeout(60)
        conn, _ = listener.accept()  # the child is past its start: it sent its request
        try:
            child.wait(timeout=0.01)
            raise SystemExit("the child ended before it was told to")
        except subprocess.TimeoutExpired:
            pass
        child.terminate()
    code = child.wait()
    print("\\n" + json.dumps({"forked": forked, "code": code}))
"""


def run_parent(tmp_path: Path, how: str, *args: str) -> tuple[dict[str, Any], str]:
    log = tmp_path / f"{how}.log"
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-P", str(script), how, str(log), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    return said, log.read_text(encoding="utf-8")


needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")


@needs_fork
@pytest.mark.parametrize("args", [["--version"], ["solve", "--no-such-flag"]])
def test_a_forked_child_says_and_exits_as_a_started_one(tmp_path: Path, args: list[str]) -> None:
    """The same command forked and started anew: the same exit status and the same log
    (stdout and stderr both there), without the text the parent had not flushed. (Click
    names the program after argv[0]: "-c" in the started child, "deepconf" in the fork.)"""
    forked, forked_log = run_parent(tmp_path, "fork", *args)
    started, started_log = run_parent(tmp_path, "start", *args)
    assert forked == {"forked": True, "code": started["code"]}
    assert forked_log == started_log.replace("-c solve", "deepconf solve") and forked_log.strip()
    assert "unflushed" not in forked_log


@needs_fork
def test_a_forked_child_ends_on_sigterm_as_a_started_one(tmp_path: Path) -> None:
    """A solve blocked on a server that never answers, terminated by a parent whose SIGTERM
    raises KeyboardInterrupt (terminate_as_interrupt): the fork does not keep that handler,
    and ends as the started child does."""
    forked, _ = run_parent(tmp_path, "fork", "SOLVE")
    started, _ = run_parent(tmp_path, "start", "SOLVE")
    assert forked == {"forked": True, "code": started["code"]}
    assert started["code"] != 0
