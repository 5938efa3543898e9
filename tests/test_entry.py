"""The `deepconf` command's entry point (deepconf/entry.py): numpy loads with one OpenBLAS
thread unless the environment names a count, and the variable is gone again, so the
processes deepconf starts choose for themselves. Each case runs in a fresh interpreter (a
BLAS library reads its thread count once, as it loads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
from deepconf.entry import load_numpy_with_one_blas_thread
load_numpy_with_one_blas_thread()
import numpy
from threadpoolctl import threadpool_info
blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"blas": blas, "env": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-P", "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",)}


def test_numpy_loads_with_one_blas_thread_and_the_variable_is_gone_again():
    got = probe(clean_env())
    assert got["blas"] and set(got["blas"]) == {1}
    assert got["env"] is None  # children of this process choose for themselves


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread either way")
def test_a_count_the_user_named_is_kept():
    got = probe(clean_env() | {"OPENBLAS_NUM_THREADS": "2"})
    assert set(got["blas"]) == {2} and got["env"] == "2"


def test_the_console_script_starts_by_the_entry_point():
    """`deepconf --version` through the installed script's own entry."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", "from deepconf.entry import main; main()", "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert out.returncode == 0 and out.stdout.strip()


def test_the_entry_leaves_the_collector_on_with_start_up_frozen():
    """Off while the CLI's modules load, on again before the command runs."""
    code = (
        "import gc, sys; from deepconf import entry; import deepconf.cli as cli;"
        " cli.app = lambda: print(gc.isenabled(), gc.get_freeze_count() > 1000); entry.main()"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, env=clean_env()
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


def _names(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The commands left registered after `only_the_named_command` on a fresh app."""
    from deepconf.cli import app
    from deepconf.entry import _command_name, only_the_named_command

    saved_commands, saved_env = app.registered_commands, dict(os.environ)
    try:
        os.environ.update(env or {})
        only_the_named_command(app, argv)
        return [_command_name(c) for c in app.registered_commands]
    finally:
        app.registered_commands = saved_commands  # the filter edits the app
        os.environ.clear()
        os.environ.update(saved_env)


def _all_names() -> list[str]:
    from deepconf.cli import app
    from deepconf.entry import _command_name

    return [_command_name(c) for c in app.registered_commands]


ALL = _all_names()


def test_a_command_line_that_names_a_command_builds_only_that_one():
    assert _names(["deepconf", "solve", "2+2?"]) == ["solve"]
    assert _names(["deepconf", "serve-model"]) == ["serve-model"]
    assert _names(["deepconf", "eval-merge", "a", "b"]) == ["eval-merge"]


@pytest.mark.parametrize(
    "argv",
    [["deepconf"], ["deepconf", "--help"], ["deepconf", "--version"], ["deepconf", "slove"]],
)
def test_anything_else_gets_every_command(argv):
    """The listing of --help, the suggestions for a mistyped name."""
    assert len(_names(argv)) == len(ALL) > 1


def test_shell_completion_gets_every_command():
    assert len(_names(["deepconf", "solve"], {"_DEEPCONF_COMPLETE": "complete_bash"})) == len(ALL)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    entry = "from deepconf.entry import main; main()"
    return subprocess.run(
        [sys.executable, "-P", "-c", entry, *args], capture_output=True, text=True, env=clean_env()
    )


def test_through_the_entry_a_command_its_help_and_a_mistyped_name_read_as_before():
    assert "--budget" in _cli("solve", "--help").stdout
    listing = _cli("--help").stdout
    assert all(name in listing for name in ("solve", "eval-merge", "serve-model", "doctor"))
    wrong = _cli("slove")
    assert wrong.returncode == 2 and "No such command" in wrong.stderr
    bad_flag = _cli("solve", "x", "--no-such-flag")
    assert bad_flag.returncode == 2 and "--no-such-flag" in bad_flag.stderr


# --- the end: leave_now ------------------------------------------------------------------------

LEAVE = """
import atexit, sys, threading, time
from pathlib import Path
from deepconf.entry import leave_now
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
{body}
"""


def _leave(tmp_path, body: str) -> subprocess.CompletedProcess[str]:
    code = LEAVE.format(body=body)
    return subprocess.run(
        [sys.executable, "-P", "-c", code, str(tmp_path)], capture_output=True, text=True
    )


def test_leaving_keeps_the_status_the_atexit_handlers_and_every_byte_written(tmp_path):
    done = _leave(tmp_path, "print('x' * 1_000_000, end=''); sys.stdout.write('end'); leave_now(3)")
    assert done.returncode == 3
    assert done.stdout == "x" * 1_000_000 + "end"  # block-buffered into a pipe, flushed
    assert (tmp_path / "atexit").read_text() == "ran"


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_leaving_reads_the_code_as_system_exit_does(tmp_path, code, status):
    done = _leave(tmp_path, f"leave_now({code!r})")
    assert done.returncode == status
    assert ("a message" in done.stderr) == (code == "a message")


def test_a_running_thread_gets_the_normal_exit_which_waits_for_it(tmp_path):
    """A non-daemon thread still working: leave_now returns, and Python's own exit joins the
    thread before it ends the process, so what the thread writes is written."""
    work = "lambda: (time.sleep(0.3), (out / 'thread').write_text('done'))"
    body = f"t = threading.Thread(target={work})\nt.start()\nleave_now(0)\nprint('returned')"
    done = _leave(tmp_path, body)
    assert done.returncode == 0 and done.stdout.strip() == "returned"
    assert (tmp_path / "thread").read_text() == "done"


# --- glibc's malloc: freed read buffers stay with the process ----------------------------------

CHURN = """
import json, resource, sys
from deepconf.entry import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def read_like_a_client(turns):
    for i in range(turns):  # two ~256 KiB blocks alive at once, then both freed: a read's
        received = bytearray(256 * 1024)  # receive buffer and the bytes its chunks join into
        joined = bytes(received)
        del received, joined
read_like_a_client(10)  # glibc settles its thresholds
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
read_like_a_client(200)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults}))
"""


def churn(how: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-P", "-c", CHURN, how],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def malloc_env() -> dict[str, str]:
    return {k: v for k, v in clean_env().items() if not k.startswith(("MALLOC_", "GLIBC_"))}


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's malloc only",
)
def test_freed_read_buffers_are_not_faulted_in_again_at_every_read():
    """200 reads' worth of 256 KiB blocks allocated and freed: with the thresholds set,
    no page fault each (the memory is reused); with glibc's own, the heap's top goes back
    to the kernel and is faulted in again page by page (a control: skipped where a glibc
    does not do that)."""
    kept = churn("keep", malloc_env())
    assert kept["kept"] is True
    assert kept["faults"] < 200  # fewer than one per read: 128 pages a read were touched
    control = churn("default", malloc_env())
    if control["faults"] < 200 * 64:
        pytest.skip(f"this glibc kept its heap by itself ({control['faults']} faults)")
    assert control["faults"] >= 200 * 64


def test_malloc_settings_the_user_made_are_kept():
    got = churn("keep", malloc_env() | {"MALLOC_TRIM_THRESHOLD_": "1048576"})
    assert got["kept"] is False
