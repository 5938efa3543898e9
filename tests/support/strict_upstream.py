"""The scripted upstream as vLLM behaves for a model it does not serve: a completion request
naming any other model gets a 404 with vLLM's error body (and is not recorded); requests for
its own model are played as by ScriptedServer.

    with StrictModelServer(default=script) as up:
        ...   # model="anything-else" -> 404 "The model `anything-else` does not exist."
"""

from __future__ import annotations

import json
from typing import Any

from support.scripted_server import ScriptedServer

COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


class StrictModelServer(ScriptedServer):
    """ScriptedServer that 404s unknown model names; `not_found` counts those answers."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.not_found = 0

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETIONS:
            return await super()._app(scope, receive, send)
        raw = await _body(receive)
        model = json.loads(raw or b"{}").get("model")
        if model != self.model:
            self.not_found += 1
            error = {
                "object": "error",
                "message": f"The model `{model}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            payload = json.dumps(error).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            return await send({"type": "http.response.body", "body": payload})
        await super()._app(scope, _replay(raw, receive), send)


async def _body(receive: Any) -> bytes:
    raw = b""
    while True:
        msg = await receive()
        raw += msg.get("body", b"")
        if not msg.get("more_body"):
            return raw


def _replay(raw: bytes, receive: Any) -> Any:
    """A receive() that gives the already-read body once, then defers to the real one (so a
    later disconnect still reaches the scripted server)."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return again
