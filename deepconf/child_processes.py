"""Worker processes a command starts (`eval --workers`, `serve --workers`): each runs the
console script again, lives no longer than its parent, and is stopped with it.

- `start_child` runs `deepconf ARGS...` with this interpreter, telling the child its
  parent's pid. The child's first act (`CHILD_CLI`) is `die_with_parent()`, so a parent
  killed outright (SIGKILL, the OOM killer), which can stop nobody, leaves no orphan.
- `stop_children` terminates those still running, then waits (SIGKILL after a grace): no
  child outlives the parent's command.
- `wait_for_an_exit` sleeps until a child ends or the poll interval passes, so the parent
  sees an exit at once rather than at its next look (a two-worker eval's last exit, ~0.1 s
  of a ~7 s run on average, was waited out by sleeping).
- `terminate_as_interrupt` makes SIGTERM (a supervisor, `kill`) stop the parent as Ctrl-C
  does, so its `finally` stops the children instead of the parent ending alone.

Why not multiprocessing: a child is exactly the command a user could run by hand, it reads
its settings from the same flags, and a killed child is just a killed command.

    with terminate_as_interrupt():
        procs = [start_child(["eval", *argv, "--shard", f"{i}/2"], stdout=log) for i in (1, 2)]
        try:
            ...  # watch them
        finally:
            stop_children(procs)
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

# The console script, run by this interpreter. -P: a working directory holding the source
# folder deepconf/ (without backends/, eval/) must not shadow the installed package.
CLI = "from deepconf.entry import main; main()"
# A child runs the console script after tying its life to the parent's.
CHILD_CLI = "from deepconf.child_processes import die_with_parent; die_with_parent(); " + CLI
PARENT_ENV = "DEEPCONF_WORKERS_PARENT"  # the parent's pid, as the child must find it
PARENT_POLL_S = 1.0  # where the kernel cannot signal a parent's death: how often to look
STOP_GRACE_S = 10.0  # a child told to stop gets this long before SIGKILL


def given_flags(ctx: Any, skip: Collection[str] = ()) -> list[str]:
    """The options a command was given (on the command line or from the environment), as
    flags again, leaving out those in `skip` (parameter names): a child gets the same
    backend and settings as its parent. `ctx` is the command's typer/click context. (Typer
    carries its own copy of click, so the parameters are told apart by their attributes,
    not by click's classes.)"""
    argv: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if param.param_type_name != "option" or name in skip:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[name]
        opts: list[str] = param.opts
        if getattr(param, "is_flag", False):
            argv += (opts if value else getattr(param, "secondary_opts", []))[:1]
        elif param.multiple:
            for item in value or ():
                argv += [opts[0], str(item)]
        elif value is not None:
            argv += [opts[0], str(value)]
    return argv


def start_child(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`deepconf ARGS...` in a new process that ends when this one does."""
    env = {**popen.pop("env", os.environ), PARENT_ENV: str(os.getpid())}
    command = [sys.executable, "-P", "-c", CHILD_CLI, *args]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, **popen)


def stop_children(procs: Sequence[subprocess.Popen[Any]], grace: float = STOP_GRACE_S) -> None:
    """Terminate the children still running, then wait for each (SIGKILL after `grace`)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_an_exit(procs: Sequence[subprocess.Popen[Any]], timeout: float) -> None:
    """Return once one of `procs` still running has ended, or after `timeout` seconds. A
    pidfd (Linux 5.3+) becomes readable when its process ends; where there is none (another
    system, an old kernel, a sandbox refusing the call) this sleeps the whole timeout. Only
    the unreaped children are watched: a reaped one's pidfd would be readable for good."""
    fds: list[int] = []
    try:
        for proc in procs:
            if proc.returncode is None:
                fds.append(os.pidfd_open(proc.pid))
        if fds:
            select.select(fds, [], [], timeout)
        else:
            time.sleep(timeout)
    except (AttributeError, OSError):  # no os.pidfd_open, or the kernel refused it
        time.sleep(timeout)
    finally:
        for fd in fds:
            os.close(fd)


def exit_described(code: int | None) -> str:
    """How a child ended, in words: "exited with code 1", "was killed by signal SIGKILL"."""
    if code is not None and code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the block runs. Signal handlers can only be
    set from the main thread; elsewhere the default stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def die_with_parent() -> None:
    """In a child: SIGTERM this process when the parent that started it dies. On Linux the
    kernel sends it (PR_SET_PDEATHSIG); elsewhere a daemon thread looks every second. The
    parent may already be gone by the time this runs (a kill between fork and here): the
    pid check after arming catches that."""
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if not parent:
        return  # run by hand, not by a parent's --workers
    if not _arm_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _arm_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
