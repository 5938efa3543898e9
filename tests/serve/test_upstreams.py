"""`deepconf serve`'s upstream side under clients that invent model names: one connection pool
whatever the names, a name the upstream does not serve gets its 404 and leaves nothing behind,
idle backends past the limit are closed (least recently used first, never one in use), and
1,000 distinct names do not grow memory. Unit tests over a fake backend, then loopback tests
in front of an upstream that 404s unknown names as vLLM does."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import httpx
import pytest
from support.proxy_runner import ProxyServer
from support.scripted_server import MODEL, Script, ScriptedServer
from support.strict_upstream import StrictModelServer

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.errors import RequestRejectedError
from deepconf.serve.upstreams import Upstreams

ASK = [{"role": "user", "content": "What is 3+4?"}]
ANSWER = Script.from_text("The answer is \\boxed{7}.", delay=0.001)


class FakeBackend:
    """Records its life; open() fails for names in `unknown`, as a probe would get a 404."""

    def __init__(self, model: str, transport: httpx.AsyncBaseTransport, unknown: set[str]):
        self.model, self.transport, self.unknown = model, transport, unknown
        self.opened = self.closed = False
        self.closing: asyncio.Event | None = None  # set: aclose() waits for it
        self.close_began = asyncio.Event()

    async def open(self) -> None:
        await asyncio.sleep(0)  # a real open awaits its probe: let concurrent acquires meet
        if self.model in self.unknown:
            raise RequestRejectedError(f"The model `{self.model}` does not exist.", 404)
        self.opened = True

    async def aclose(self) -> None:
        self.close_began.set()
        if self.closing is not None:
            await self.closing.wait()
        self.closed = True

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        raise AssertionError("not streamed in these tests")
        yield  # pragma: no cover


def fake_pool(
    max_idle: int, unknown: set[str] = frozenset(), max_connections: int = 1024
) -> tuple[Upstreams, list]:
    made: list[FakeBackend] = []

    def factory(model: str, api: str, transport: httpx.AsyncBaseTransport) -> FakeBackend:
        made.append(FakeBackend(model, transport, set(unknown)))
        return made[-1]

    return Upstreams(factory, max_idle=max_idle, max_connections=max_connections), made


async def test_every_backend_shares_the_one_transport() -> None:
    """Backends for different names all get the pool's one transport (one connection pool)."""
    pool, made = fake_pool(max_idle=8)
    for name in ("a", "b", "c"):
        await pool.acquire(name, "chat")
    assert {id(b.transport) for b in made} == {id(pool.transport)}
    await pool.aclose()


async def test_idle_backends_past_the_limit_are_closed_least_recently_used_first() -> None:
    """With max_idle=2, each new backend trims the idle ones to the two most recently used:
    after six names used one at a time, the first three were closed in the order used, and
    a name used again moves to the back of the line."""
    pool, made = fake_pool(max_idle=2)
    for name in ("a", "b", "c", "d", "e"):
        await pool.acquire(name, "chat")
        pool.release(name, "chat")
    await pool.acquire("c", "chat")  # c is used again: now the most recently used idle one
    pool.release("c", "chat")
    await pool.acquire("f", "chat")
    assert [b.model for b in made if b.closed] == ["a", "b", "d"]
    assert len(pool) == 3 and pool.closed_idle == 3
    await pool.aclose()
    assert all(b.closed for b in made)


async def test_a_backend_in_use_is_never_closed() -> None:
    """max_idle=0 closes every idle backend, but not the ones solves are using."""
    pool, made = fake_pool(max_idle=0)
    busy = await pool.acquire("busy", "chat")
    for name in ("x", "y", "z"):
        await pool.acquire(name, "chat")
        pool.release(name, "chat")
    # idle ones are trimmed when a new backend opens: x and y went, z waits for the next
    assert [b.model for b in made if b.closed] == ["x", "y"]
    assert not busy.closed and len(pool) == 2
    again = await pool.acquire("busy", "chat")  # a second solve on the same name
    assert again is busy and pool.opened == 4
    await pool.aclose()


async def test_a_backend_two_solves_share_stays_open_until_both_release_it() -> None:
    """Users are counted, not flagged: with two solves on one name and one done, the backend
    is still in use and survives the trim a new name triggers; once both are done it goes."""
    pool, _ = fake_pool(max_idle=0)
    shared = await pool.acquire("shared", "chat")
    await pool.acquire("shared", "chat")
    pool.release("shared", "chat")
    await pool.acquire("n1", "chat")
    assert not shared.closed
    pool.release("shared", "chat")
    await pool.acquire("n2", "chat")
    assert shared.closed
    await pool.aclose()


async def test_a_backend_taken_during_a_trim_is_skipped_and_the_trim_goes_on() -> None:
    """Idle a, b, c and max_idle=0: a new name trims all three. While a's close is awaited,
    a request takes b. The trim then skips b (in use again) and still closes c."""
    pool, made = fake_pool(max_idle=0)
    for name in ("a", "b", "c"):
        await pool.acquire(name, "chat")
    for name in ("a", "b", "c"):
        pool.release(name, "chat")
    a, b, c = made
    a.closing = asyncio.Event()
    trim = asyncio.create_task(pool.acquire("d", "chat"))
    await a.close_began.wait()
    assert await pool.acquire("b", "chat") is b  # taken while a closes
    a.closing.set()
    await trim
    assert (a.closed, b.closed, c.closed) == (True, False, True)
    await pool.aclose()


async def test_a_failed_open_leaves_nothing_and_concurrent_requests_open_once() -> None:
    """A name the upstream does not serve: the error (with its 404) reaches every request,
    nothing stays open. A served name asked by ten requests at once is opened once."""
    pool, made = fake_pool(max_idle=4, unknown={"ghost"})
    with pytest.raises(RequestRejectedError) as info:
        await pool.acquire("ghost", "chat")
    assert info.value.status == 404
    assert len(pool) == 0 and made[0].closed
    backends = await asyncio.gather(*(pool.acquire("real", "chat") for _ in range(10)))
    assert len({id(b) for b in backends}) == 1 and pool.opened == 2
    await pool.aclose()


# --- loopback -----------------------------------------------------------------------------------


class HeldServer:
    """A loopback HTTP/1.1 server that answers each request only when given a permit, on
    keep-alive connections: it counts connections accepted and requests received."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.arrived = asyncio.Condition()
        self.permits: asyncio.Queue[None] = asyncio.Queue()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                async with self.arrived:
                    self.requests += 1
                    self.arrived.notify_all()
                await self.permits.get()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("proxy", [False, True], ids=["lean-transport", "proxy-environment"])
async def test_the_shared_pool_opens_at_most_max_connections_to_the_upstream(
    monkeypatch: pytest.MonkeyPatch, proxy: bool
) -> None:
    """max_connections=2 and three requests at once: two connections open, the third
    request waits for one to come free and reuses it (none fails, none opens a third). With
    a proxy in the environment the pool is httpx's own transport, under the same cap."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    pool, _ = fake_pool(max_idle=1, max_connections=2)
    assert isinstance(pool.transport._pool, httpx.AsyncHTTPTransport) == proxy
    held = HeldServer()
    async with held as url, httpx.AsyncClient(transport=pool.transport) as client:
        calls = [asyncio.create_task(client.get(url)) for _ in range(3)]
        async with held.arrived:
            await held.arrived.wait_for(lambda: held.requests >= 2)
        for _ in range(3):
            held.permits.put_nowait(None)
        answers = await asyncio.gather(*calls)
    assert [r.text for r in answers] == ["ok"] * 3
    assert (held.connections, held.requests) == (2, 3)
    await pool.aclose()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def test_unknown_model_names_get_404s_and_keep_no_backend() -> None:
    """300 distinct names the upstream does not serve: each gets the upstream's 404 passed
    on, each cost one probe (counted upstream), no backend stays open, and the process's
    memory grows by less than 20 MB (the issue measured 164 MB for 200 names; `deepconf bench
    hostile` measures 1,000 against a `deepconf serve` process)."""
    with (
        StrictModelServer(default=ANSWER) as up,
        ProxyServer(up.base_url) as px,
        httpx.Client(base_url=px.base_url, timeout=30) as http,
    ):
        for i in range(50):  # warm-up: imports, caches and pools reach their working size
            http.post("/chat/completions", json={"model": f"warm-{i}", "messages": ASK})
        gc.collect()
        before = _rss_mb()
        statuses = set()
        for i in range(300):
            r = http.post("/chat/completions", json={"model": f"name-{i}", "messages": ASK})
            statuses.add(r.status_code)
            assert r.json()["error"]["code"] == "model_not_found"
        gc.collect()
        grown = _rss_mb() - before
        health = http.get(px.root + "/health").json()
        served = http.post("/chat/completions", json={"model": MODEL, "messages": ASK})
    assert statuses == {404}
    assert up.not_found == 350  # one probe per name, no retries
    assert health["backends"] == 0
    assert grown < 20, f"RSS grew {grown:.1f} MB"
    assert served.status_code == 200 and served.json()["deepconf"]["answer"] == "7"


def test_names_the_upstream_accepts_keep_at_most_the_idle_limit_open() -> None:
    """An upstream that answers any name (llama.cpp's server does): 40 names solved one after
    another leave at most max_idle_backends backends open, each answered correctly."""
    with (
        ScriptedServer(default=ANSWER) as up,  # answers whatever model is named
        ProxyServer(up.base_url, max_idle_backends=3) as px,
        httpx.Client(base_url=px.base_url, timeout=30) as http,
    ):
        pool = px.app.state.server.pool
        answers = set()
        for i in range(40):
            body = {"model": f"any-{i}", "messages": ASK, "deepconf": {"budget": 1}}
            answers.add(http.post("/chat/completions", json=body).json()["deepconf"]["answer"])
        open_now = http.get(px.root + "/health").json()["backends"]
    assert answers == {"7"}
    assert pool.opened == 40
    # the 3 idle ones kept, plus the last solves if their release had not run yet
    assert open_now <= 3 + 2
