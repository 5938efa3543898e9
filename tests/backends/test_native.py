"""The optional C parts (backends/native.py): built wherever a compiler is, and switched off
as a whole by DEEPCONF_NO_C, in a new process as users set it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from deepconf.backends import native

PARTS = ("_chunkscan", "_framing")


def test_the_c_parts_are_built_wherever_a_compiler_is(monkeypatch):
    """setup.py builds them as optional; on a machine with a C compiler (CI's) a silent build
    failure would leave every read on the slow path, so they must be there."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    monkeypatch.delenv(native.SWITCH, raising=False)
    assert all(native.load(name) is not None for name in PARTS)


@pytest.mark.parametrize(("value", "off"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_switch_is_off_only_for_empty_and_0(monkeypatch, value, off):
    monkeypatch.setenv(native.SWITCH, value)
    assert native.disabled() is off
    if off:
        assert [native.load(name) for name in PARTS] == [None, None]


def test_a_part_that_was_never_built_loads_as_none(monkeypatch):
    monkeypatch.delenv(native.SWITCH, raising=False)
    assert native.load("_no_such_part") is None


@pytest.mark.parametrize("value", ["1", "0"])
def test_a_process_started_with_the_switch_reads_streams_in_python_alone(value):
    code = (
        "from deepconf.backends import h1_transport, sse, sse_framing\n"
        "print([m is None for m in (sse._chunkscan, sse_framing._framing, h1_transport._framing)])"
    )
    env = {**os.environ, native.SWITCH: value}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if value == "1":
        assert out == "[True, True, True]"
    elif all(native.load(name) is not None for name in PARTS):
        assert out == "[False, False, False]"
