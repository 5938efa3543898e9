"""`deepconf serve`'s app running for real on 127.0.0.1 (uvicorn in a daemon thread), in front
of an upstream base URL, for tests that talk to it with the openai client or httpx.
`LoopbackServer` serves any ASGI app the same way (e.g. the bundled model's server).

    with ScriptedServer(default=script) as upstream, ProxyServer(upstream.base_url) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from deepconf.backend import Backend
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.config import DeepConfConfig
from deepconf.serve.app import create_app
from deepconf.serve.connections import ConnectionGuard
from support.live_server import LoopbackServer

# Small settings for scripted traces of a few tokens.
TEST_DEFAULTS = DeepConfConfig(budget=4, warmup=2, concurrency=4, confidence={"window": 2})


class LogCapture(logging.Handler):
    """Keeps the deepconf.serve log lines (one JSON object per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class ProxyServer(LoopbackServer):
    """`create_app` over the real HTTP backend, served on a free loopback port under a
    ConnectionGuard (`guard`, sized by `max_connections` and `header_timeout`) as `deepconf
    serve` runs it; the deepconf.serve log lines are kept in `logs`."""

    def __init__(
        self,
        upstream: str,
        *,
        max_connections: int = 256,
        header_timeout: float = 5.0,
        **app_kw: Any,
    ) -> None:
        self.guard = ConnectionGuard(max_connections, header_timeout)
        app_kw.setdefault("connections", self.guard)
        app_kw.setdefault("defaults", TEST_DEFAULTS)
        # 0.05 s progress interval keeps streaming tests short; the default is 0.25 s.
        app_kw.setdefault("progress_interval", 0.05)

        def factory(model: str, api: str, transport: httpx.AsyncBaseTransport) -> Backend:
            config = HttpBackendConfig(
                base_urls=[upstream], model=model, api=api, max_retries=0, top_logprobs=20
            )
            return OpenAIHttpBackend(config, transport=transport)

        app = create_app(factory, upstreams=[upstream], **app_kw)
        super().__init__(app, **self.guard.uvicorn_options())
        self.logs = LogCapture()

    def start(self) -> ProxyServer:
        logger = logging.getLogger("deepconf.serve")
        logger.addHandler(self.logs)
        logger.setLevel(logging.INFO)
        super().start()
        return self

    def stop(self) -> None:
        logging.getLogger("deepconf.serve").removeHandler(self.logs)
        super().stop()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def wait_log(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first log line (as a dict) that satisfies `predicate(dict)`, waiting for it up
        to `timeout` seconds; an AssertionError that shows every line if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.logs.lines):
                record = json.loads(line)
                if predicate(record):
                    return record
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log line matched; the lines: {self.logs.lines}")
            time.sleep(0.01)
