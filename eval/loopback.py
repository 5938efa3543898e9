"""Run an ASGI app under uvicorn on a free loopback port, in a daemon thread.

The one server runner of the tests: the scripted upstream, serve-model, and deepconf serve
all start through it.

    with LoopbackServer(app) as server:
        httpx.get(server.root + "/health")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn


class LoopbackServer:
    """uvicorn serving an ASGI `app` on a free loopback port; `config` goes to uvicorn."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        self._config = {"log_level": "critical", "access_log": False, "lifespan": "on", **config}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def metrics(self) -> dict[str, Any]:
        """The server's GET /metrics (serve-model's counters)."""
        return httpx.get(self.root + "/metrics").json()

    def start(self) -> LoopbackServer:
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on
        # sockets whose proto says TCP, and accepted sockets inherit it. Without it every
        # keep-alive response written in two parts waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, **self._config))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for streams a test left open
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
