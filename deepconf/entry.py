"""The `deepconf` command's entry point: what must happen before anything loads, then the CLI.

OpenBLAS, as numpy loads it, starts a thread per core that spins waiting for work before
it sleeps: ~90 ms of CPU per process on this 2-core machine (`import numpy` costs 0.21
CPU-s against 0.12 with one thread), paid by every `deepconf` run, eval worker and server
for nothing, since the orchestrator's arrays are small (a row of k logprobs, a window of
confidences). So unless the user chose a count, numpy loads with one BLAS thread; the
variable is removed again at once, so the processes deepconf starts choose for themselves,
and the bundled engine gives a model big enough to use them every core
(backends/bundled.py `limit_blas_threads`).

glibc's malloc gives a block of 128 KiB or more its own mapping, and hands the free top
of its heap back to the kernel past a threshold that it raises only to twice the largest
mapped block freed so far. A streaming client frees blocks of ~256 KiB at every read (the
receive buffer as it empties, the body bytes a read's chunks join into), so the heap's top
went back and forth to the kernel at each: 442,000 page faults in an eval of 2,048,000
tokens with 32 traces in flight (140,000 with 64), each page zeroed again. So unless the
environment tunes malloc itself, blocks under 4 MiB come from the heap and up to 64 MiB of
free heap stay with the process (`keep_freed_memory`): 17,000 faults in the same eval at
either count, and its CPU 10% lower with 32 in flight (11.23 against 12.48 CPU-s, medians
of 4, alternating) and 4.5% with 64 (11.38 against 11.91, medians of 3): each worker of
`eval --workers 2` runs 32 of the 64, so it had paid the most. Elsewhere (musl, macOS)
nothing changes.

Start-up also allocates the objects that live as long as the process (modules, classes,
pydantic and typer models): the cyclic garbage collector walked them over and over while
they loaded, and at every full collection after. It is off while they load and they are
frozen out of its reach after (`gc.freeze`): ~75 -> ~30 ms of a 256,000-token solve's
collections, counted with gc.callbacks.

Typer builds a click command from every registered function's signature at each start
(~40 ms of CPU for the nine commands here, most of it evaluating annotations), though one
command runs: a command line that names a command has only that one built (~5 ms). Anything
else (`--help`, `--version`, a mistyped name, shell completion) gets the whole group, so
its listing, suggestions and completions are the same.

And the end: when the command is done, the interpreter's finalization tears down every
module and object of a process about to vanish: 53-77 ms of CPU after the last atexit
handler of a 256,000-token solve (six runs; 5-9 ms with the exit below), about what 7,000
of its tokens cost to read. So once the command has exited,
its atexit handlers run and the standard streams are flushed as finalization would, and
the process leaves by os._exit. Every file deepconf writes is closed or flushed by then (a
trace line is flushed as it is written, results files are replaced whole); with another
non-daemon thread still running, the normal exit runs instead, which waits for it.

    deepconf = "deepconf.entry:main"     # pyproject.toml [project.scripts]
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

BLAS_THREADS = "OPENBLAS_NUM_THREADS"


MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_ABOVE = 4 << 20  # bytes: a block this big or bigger still gets its own mapping
KEEP_FREE = 64 << 20  # bytes of free heap top kept rather than handed back


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (see the module docstring); True if they were set."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False  # musl: its malloc has no such thresholds
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False  # not glibc, or a libc without mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_FREE)
    )


def load_numpy_with_one_blas_thread() -> None:
    """Import numpy with one OpenBLAS thread unless the environment names a count."""
    if BLAS_THREADS in os.environ:
        return
    os.environ[BLAS_THREADS] = "1"
    try:
        import numpy  # noqa: F401  (OpenBLAS reads the variable as it loads)
    finally:
        del os.environ[BLAS_THREADS]


def only_the_named_command(app: typer.Typer, argv: list[str]) -> None:
    """Leave registered in `app` only the command `argv[1]` names, when it names one and no
    shell completion is asking (its listing needs them all)."""
    if len(argv) < 2 or argv[1].startswith("-"):
        return
    if any(name.endswith("_COMPLETE") for name in os.environ):
        return
    named = [c for c in app.registered_commands if _command_name(c) == argv[1]]
    if named:
        app.registered_commands = named


def _command_name(info: typer.models.CommandInfo) -> str:
    """The name typer gives a command: its own, or its function's with dashes."""
    if info.name:
        return info.name
    assert info.callback is not None
    return info.callback.__name__.lower().replace("_", "-")


def main() -> None:
    gc.disable()
    try:
        keep_freed_memory()
        load_numpy_with_one_blas_thread()
        from deepconf.cli import app

        only_the_named_command(app, sys.argv)
    finally:
        gc.freeze()  # what start-up made stays: no collection walks it again
        gc.enable()
    try:
        app()  # click ends every command, and every error, in sys.exit
    except SystemExit as done:
        leave_now(done.code)
        raise


# Python's own exit status when flushing stdout fails at exit (a closed pipe)
FLUSH_FAILED = 120


def leave_now(code: object) -> None:
    """Exit with `code` as SystemExit(code) would, less the interpreter's finalization;
    returns (for the normal exit) while another non-daemon thread runs."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): the message goes to stderr, the status is 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            status = status or FLUSH_FAILED
    os._exit(status)
