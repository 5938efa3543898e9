"""The optional C fast paths of stream reading, and the switch that turns them off.

backends/_chunkscan.c (the common chat chunk) and backends/_framing.c (whole HTTP chunks,
plain SSE data events) are built by setup.py where a C compiler is found. Each stands in
for Python steps that stay in place: every read C declines, and every read on an install
without a compiler, takes those steps, with the same results (the tests compare them).

`DEEPCONF_NO_C=1` in the environment makes a process use the Python steps alone: to rule
the C parts out when a stream reads wrongly, and for the benchmarks' side-by-side rows.

    _chunkscan = native.load("_chunkscan")   # the module, or None
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

SWITCH = "DEEPCONF_NO_C"


def disabled() -> bool:
    """Whether the environment turns the C parts off (any value but empty and 0)."""
    return os.environ.get(SWITCH, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """deepconf.backends.<name> if it was built and is not switched off, else None."""
    if disabled():
        return None
    try:
        return importlib.import_module(f"deepconf.backends.{name}")
    except ImportError:  # built without a C compiler
        return None
