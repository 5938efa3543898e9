"""Reading a `deepconf serve` request body: every way it can be wrong is the client's, so every
one is a 4xx in OpenAI's error shape, never a 500 with a traceback.

Checked, in order: the size (413, before reading when Content-Length says so, else while
reading), the time it takes to arrive (408 past BODY_SECONDS), that it parses as JSON
(orjson: it also refuses invalid UTF-8, lone surrogates such as ``"\\ud800"`` that no
upstream could be sent, NaN and infinities, and nesting past 1024), that the top is an
object, and that it nests no deeper than MAX_DEPTH (deeper structures would later meet
recursion limits in validation, encoding or logging). Not here: the fields' meaning
(deepconf/serve/wire.py).

    body = await read_json(request, max_bytes=8 * 2**20)   # HttpError(4xx) when it is not
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request

from deepconf.serve.solve import HttpError

# OpenAI requests nest a handful of levels (messages -> content parts -> image_url); 64 leaves
# room for any JSON schema a client sends along, and stops a body built to exhaust recursion.
MAX_DEPTH = 64
# A body trickled in a byte at a time would hold its connection and task for ever (the
# connection guard bounds only the request head); 8 MB arrives in far less over any link.
BODY_SECONDS = 30.0


async def read_json(
    request: Request, max_bytes: int, seconds: float = BODY_SECONDS
) -> dict[str, Any]:
    """The request's JSON object, or HttpError: 413 past `max_bytes`, 408 when it takes
    longer than `seconds` to arrive, 400 otherwise."""
    try:
        async with asyncio.timeout(seconds):
            raw = await _read_limited(request, max_bytes)
    except TimeoutError:
        raise HttpError(
            408,
            f"the request body took longer than {seconds:g} s to arrive",
            code="request_timeout",
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    where = too_deep(body, MAX_DEPTH)
    if where is not None:
        raise HttpError(
            400,
            f"the request body nests deeper than {MAX_DEPTH} levels (at {where}): flatten it",
            param=where,
        )
    return body


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    too_big = HttpError(
        413,
        f"request body larger than {max_bytes} bytes (--max-body-bytes)",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big  # refused before a byte of it is read
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise too_big
        chunks.append(part)
    return b"".join(chunks)


def too_deep(value: Any, limit: int) -> str | None:
    """The dotted path of the first container nested more than `limit` levels down, else
    None. Iterative, so the check itself cannot exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            return path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
    return None
