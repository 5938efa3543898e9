"""The two ways a trace's batches come out of the HTTP backend, for tests that must hold on
both: `stream()` (an async generator, one task step per read: the reference) and `push()`
(each batch handed to a callback from the transport's read callback: the controller's way,
backends/response_reader.py). A module runs every test on both with

    @pytest.fixture(autouse=True, params=READ_PATHS)
    def read_path(request): return use_read_path(request.param)

and reads its traces with `read_trace(backend, request)`.
"""

from __future__ import annotations

import contextlib

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends.openai_http import OpenAIHttpBackend

READ_PATHS = ("stream", "push")
_path = ["stream"]


def use_read_path(path: str) -> str:
    assert path in READ_PATHS
    _path[0] = path
    return path


async def read_trace(backend: OpenAIHttpBackend, request: TraceRequest) -> list[TokenBatch]:
    """Every batch of one trace, by the path the module's fixture chose."""
    if _path[0] == "push":
        batches: list[TokenBatch] = []

        def consume(batch: TokenBatch) -> bool:
            batches.append(batch)
            return False

        await backend.push(request, consume)
        return batches
    async with contextlib.aclosing(backend.stream(request)) as stream:
        return [b async for b in stream]
