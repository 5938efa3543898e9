"""The upstream side of `deepconf serve`: one connection pool for the upstream servers, and
the backends opened over it, one per (model name, api), whatever names clients send.

Memory must not grow with the names clients make up (it did: a new HTTP client, with its own
TLS context and pool, and a probe per name, never freed: 164 MB for 200 names). So:

- every backend sends through the one `SharedTransport` (one connection pool, one TLS
  context); closing a backend leaves it open, and the server closes it at shutdown;
- a backend whose open() fails is not kept: a name the upstream does not serve costs one
  probe, whose 404 goes back to the client (deepconf/serve/solve.py), then nothing;
- backends no request is using are kept for reuse, `max_idle` of them: whenever a new one
  opens, the least recently used idle ones past that are closed. One in use never is.

No routing or HTTP serving here.

    upstreams = Upstreams(lambda model, api, transport: OpenAIHttpBackend(cfg, transport=transport))
    backend = await upstreams.acquire("my-model", "chat")   # opened (and probed) on first use
    ...                                                   # solve with it
    upstreams.release("my-model", "chat")
    await upstreams.aclose()
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from deepconf.backend import Backend
from deepconf.backends.h1_transport import default_transport

# (model, api, transport) -> a new, unopened backend that sends through `transport`;
# api is "chat" or "completions".
BackendFactory = Callable[[str, str, httpx.AsyncBaseTransport], Backend]

DEFAULT_MAX_IDLE = 16  # idle backends kept for reuse (each is a few KB over the shared pool)


class SharedTransport(httpx.AsyncBaseTransport):
    """One connection pool lent to many clients: their aclose() leaves it open;
    `shutdown()` closes it. Keep-alive connections are reused across model names. The pool
    is the HTTP backend's own (backends/h1_transport.py: the lean HTTP/1.1 transport for
    plain http, httpx's for https), so serve's upstream streams cost what solve's do."""

    def __init__(self, max_connections: int) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # None: proxies in the environment, which httpx applies only to a client without
        # a transport of its own; serve's pool keeps httpx's plain transport there.
        self._pool = default_transport(limits) or httpx.AsyncHTTPTransport(limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool.handle_async_request(request)

    async def aclose(self) -> None:
        """A borrower closing its client: the pool stays open for the others."""

    async def shutdown(self) -> None:
        await self._pool.aclose()


@dataclass
class _Entry:
    backend: Backend
    users: int  # solves using it now


class Upstreams:
    """The opened backends by (model, api), least recently used first; see the module."""

    def __init__(
        self,
        factory: BackendFactory,
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        max_connections: int = 1024,
    ) -> None:
        self._factory = factory
        self.max_idle = max_idle
        self.transport = SharedTransport(max_connections)
        self._open: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._opening: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.opened = 0  # backends opened in all (a failed open() counts too)
        self.closed_idle = 0  # idle backends closed to stay within max_idle

    def __len__(self) -> int:
        """Backends open now, in use or idle."""
        return len(self._open)

    async def acquire(self, model: str, api: str) -> Backend:
        """The backend for (model, api), opened on first use; `release` it when done.
        Raises what its open() raised (e.g. the upstream's 404 for an unknown model)."""
        key = (model, api)
        while (opening := self._opening.get(key)) is not None:
            await asyncio.wait({opening})  # another request is opening it: then look again
        entry = self._open.get(key)
        if entry is None:
            entry = _Entry(await self._open_new(key), users=1)
            self._open[key] = entry
            await self._close_idle_past_limit()
        else:
            entry.users += 1
            self._open.move_to_end(key)
        return entry.backend

    def release(self, model: str, api: str) -> None:
        """A solve is done with the backend it acquired."""
        entry = self._open.get((model, api))
        if entry is not None:
            entry.users -= 1

    async def aclose(self) -> None:
        entries, self._open = list(self._open.values()), OrderedDict()
        try:
            for entry in entries:
                await entry.backend.aclose()
        finally:
            await self.transport.shutdown()

    async def _open_new(self, key: tuple[str, str]) -> Backend:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[key] = done
        try:
            self.opened += 1
            backend = self._factory(key[0], key[1], self.transport)
            try:
                await backend.open()
            except BaseException:
                await backend.aclose()
                raise
            return backend
        finally:
            del self._opening[key]
            done.set_result(None)

    async def _close_idle_past_limit(self) -> None:
        idle = [key for key, entry in self._open.items() if entry.users == 0]  # LRU first
        for key in idle[: max(0, len(idle) - self.max_idle)]:
            entry = self._open.get(key)
            if entry is None or entry.users:  # taken while an earlier one was closing
                continue
            del self._open[key]
            self.closed_idle += 1
            await entry.backend.aclose()
