"""deepconf: DeepConf (Deep Think with Confidence) over any OpenAI-compatible server or the
bundled hybrid model.

    from deepconf import DeepConf, DeepConfConfig, solve
    result = solve("What is 2+3? Answer in \\boxed{}.", backend=backend, budget=32)

The names below load on first use, so `import deepconf.confidence` (or a backend) does not
pull in the controller, voting and math-verify.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DeepConf",
    "DeepConfConfig",
    "Progress",
    "SolveResult",
    "TokenTotals",
    "TraceRecord",
    "TraceStatus",
    "TraceWriter",
    "read_traces",
    "solve",
]
__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "DeepConf": "deepconf.controller",
    "DeepConfConfig": "deepconf.config",
    "Progress": "deepconf.result",
    "SolveResult": "deepconf.result",
    "TokenTotals": "deepconf.result",
    "TraceRecord": "deepconf.trace",
    "TraceStatus": "deepconf.trace",
    "TraceWriter": "deepconf.trace",
    "read_traces": "deepconf.trace",
    "solve": "deepconf.api",
}

if TYPE_CHECKING:
    from deepconf.api import solve
    from deepconf.config import DeepConfConfig
    from deepconf.controller import DeepConf
    from deepconf.result import Progress, SolveResult, TokenTotals
    from deepconf.trace import TraceRecord, TraceStatus, TraceWriter, read_traces


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepconf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
