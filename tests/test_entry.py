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
