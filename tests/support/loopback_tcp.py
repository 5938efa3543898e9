"""A raw asyncio TCP server on loopback, for tests that decide every byte a client reads."""

from __future__ import annotations

import asyncio


class LoopbackServer:
    """Subclasses write `_serve(reader, writer)`, one call per connection. `async with`
    yields the base URL ("http://HOST:PORT"); leaving it stops listening and cancels the
    connections still being served, so a handler that waits forever ends with the test."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._track, self.host, 0)
        return f"http://{self.host}:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self.tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
