"""Run an ASGI app under uvicorn on a free loopback port, in a daemon thread."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


class Server:
    """uvicorn serving `app` on a free loopback port, in a daemon thread."""

    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict:
        return httpx.get(self.url + "/metrics").json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
