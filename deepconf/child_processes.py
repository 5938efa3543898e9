"""Worker processes a command starts (`eval --workers`, `serve --workers`): each runs the
console script again, lives no longer than its parent, and is stopped with it.

- `start_child` runs `deepconf ARGS...` with this interpreter, telling the child its
  parent's pid. The child's first act (`CHILD_CLI`) is `die_with_parent()`, so a parent
  killed outright (SIGKILL, the OOM killer), which can stop nobody, leaves no orphan.
- `fork_child` runs the same command in a fork of the parent (Linux, and only while the
  parent runs no other thread; `start_child` otherwise): the child inherits the modules the
  parent loaded instead of loading them again, ~0.5 CPU-s per worker here (interpreter,
  numpy, httpx, pydantic, typer), which on a 2-core machine is ~5% of a two-worker eval of
  4 million tokens. It starts as a fresh process would: default SIGTERM and SIGINT, stdin
  from /dev/null, stdout and stderr on the log, no atexit handler of the parent's, and it
  leaves by os._exit, never through the parent's code.
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

import atexit
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Collection, Iterator, Sequence
from typing import IO, Any, Protocol

# The console script, run by this interpreter. -P: a working directory holding the source
# folder deepconf/ (without backends/, eval/) must not shadow the installed package.
CLI = "from deepconf.entry import main; main()"
# A child runs the console script after tying its life to the parent's.
CHILD_CLI = "from deepconf.child_processes import die_with_parent; die_with_parent(); " + CLI
PARENT_ENV = "DEEPCONF_WORKERS_PARENT"  # the parent's pid, as the child must find it
PARENT_POLL_S = 1.0  # where the kernel cannot signal a parent's death: how often to look
STOP_GRACE_S = 10.0  # a child told to stop gets this long before SIGKILL
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15  # <linux/prctl.h>
REAP_POLL_S = 0.05  # a timed wait for a forked child looks this often (woken by its pidfd)


class Child(Protocol):
    """What the watchers use of a child: subprocess.Popen's, or ForkedChild's."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


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


def can_fork() -> bool:
    """Forking is safe here: Linux (elsewhere system libraries may not survive a fork) and
    no thread but this one (another's locks would stay held in the child for good)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def fork_child(args: Sequence[str], log: IO[bytes], name: str) -> Child:
    """`deepconf ARGS...` with stdout and stderr to `log`, in a fork of this process where
    `can_fork()`, else in a new interpreter (`start_child`). A fork keeps its parent's
    command line, so it is told apart by `name`: its process name (`ps -o comm`, top;
    the first 15 bytes)."""
    if not can_fork():
        return start_child(args, stdout=log, stderr=subprocess.STDOUT)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # else what the parent buffered is written again by the child
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_forked(list(args), log.fileno(), parent, name)  # never returns
    return ForkedChild(pid)


def _run_forked(args: list[str], log_fd: int, parent: int, name: str) -> None:
    """In the forked child: become what `start_child` would start, run the command, and
    leave by os._exit with its status (the parent's frames below this one never resume)."""
    status = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's may raise KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # New stream objects: the parent's may be another's (a test runner captures them).
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        atexit._clear()  # the parent's handlers are the parent's to run
        _prctl(PR_SET_NAME, name.encode()[:15])
        os.environ[PARENT_ENV] = str(parent)
        die_with_parent()
        sys.argv = ["deepconf", *args]
        from deepconf.cli import app
        from deepconf.entry import leave_now

        try:
            app(args=args)
        except SystemExit as done:
            leave_now(done.code)  # returns only while another non-daemon thread runs
            status = done.code if isinstance(done.code, int) else int(done.code is not None)
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


class ForkedChild:
    """A forked child as the watchers see a Popen: its pid, poll, wait, terminate, kill."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None and self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        deadline = time.monotonic() + (timeout or 0.0)
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"deepconf worker {self.pid}", timeout or 0.0)
            wait_for_an_exit([self], min(left, REAP_POLL_S))
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:  # an unreaped child's pid is still its own
            os.kill(self.pid, sig)


def stop_children(procs: Sequence[Child], grace: float = STOP_GRACE_S) -> None:
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


def wait_for_an_exit(procs: Sequence[Child], timeout: float) -> None:
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
    return sys.platform.startswith("linux") and _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _prctl(option: int, arg: int | bytes) -> bool:
    """Linux's prctl(2) with one argument; True if it took."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, arg, 0, 0, 0) == 0


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
