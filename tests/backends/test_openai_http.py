"""The OpenAI-compatible backend against a real local streaming server (ScriptedServer)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
from support.read_paths import READ_PATHS, read_trace, use_read_path
from support.scripted_server import CONFIDENT, Script, ScriptedServer, ScriptToken, scripted_server

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends.openai_http import PROBE_TOKENS, HttpBackendConfig, OpenAIHttpBackend
from deepconf.backends.routing import EndpointPool, retry_delay
from deepconf.config import SamplingConfig
from deepconf.errors import (
    CapabilityError,
    ConfigError,
    ConnectError,
    RequestRejectedError,
    ServerError,
    StreamError,
)

__all__ = ["scripted_server"]  # the fixture, imported for pytest

TEXT = "The answer is \\boxed{7}."
REASONING = "Let me add three and four carefully."


def backend_for(*servers: ScriptedServer, **kw) -> OpenAIHttpBackend:
    kw.setdefault("backoff_base", 0.01)
    return OpenAIHttpBackend(HttpBackendConfig(base_urls=[s.base_url for s in servers], **kw))


def traces(server: ScriptedServer) -> list:
    """The server's stream records of traces, leaving out the backend's capability probe."""
    return [s for s in server.streams if s.body.get("max_tokens") != PROBE_TOKENS]


def request(prompt="What is 3+4?", k=20, seed=None, **sampling) -> TraceRequest:
    return TraceRequest(0, prompt, SamplingConfig(**sampling), top_logprobs=k, seed=seed)


async def collect(backend: OpenAIHttpBackend, req: TraceRequest) -> list[TokenBatch]:
    return await read_trace(backend, req)


@pytest.fixture(autouse=True, params=READ_PATHS)
def read_path(request: pytest.FixtureRequest) -> str:
    """Every test here reads its traces by stream() and by push() (tests/support/read_paths.py)."""
    return use_read_path(request.param)


def joined(batches: list[TokenBatch]) -> tuple[np.ndarray, str, str]:
    lp = np.concatenate([b.top_logprobs for b in batches])
    return lp, "".join(b.text for b in batches), "".join(b.reasoning for b in batches)


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_stream_counts_tokens_from_logprobs_in_multi_token_chunks(scripted_server, api):
    """3 tokens per chunk: rows = tokens (not chunks), each row the script's top-k largest
    first; text, reasoning (chat) and the finish reason arrive intact; the model name comes
    from /v1/models."""
    script = Script.from_text(TEXT, reasoning=REASONING, tokens_per_chunk=3)
    scripted_server.default = script
    backend = backend_for(scripted_server, api=api)
    await backend.open()
    try:
        batches = await collect(backend, request(k=5))
    finally:
        await backend.aclose()
    lp, text, reasoning = joined(batches)
    assert backend.model == "scripted-model"
    assert lp.shape == (len(script.tokens), 5)
    np.testing.assert_array_equal(lp, np.tile(CONFIDENT[:5], (len(script.tokens), 1)))
    if api == "chat":
        assert (reasoning, text) == (REASONING, TEXT)
    else:  # completions has no reasoning channel: everything is text
        assert text == REASONING + TEXT
    assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
    # A batch is one network read: whole 3-token chunks, several when they came together.
    sizes = [b.n_tokens for b in batches if b.n_tokens]
    assert all(n % 3 == 0 for n in sizes[:-1]) and max(sizes) >= 3


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_k_plus_one_entries_give_k_largest(scripted_server, api):
    """llama.cpp-style chat lists (sampled token appended as entry k+1) and completions
    dicts with k+1 keys both decode to exactly the k largest logprobs."""
    scripted_server.default = Script.from_text(TEXT, append_sampled=True)
    backend = backend_for(scripted_server, api=api, top_logprobs=4)
    await backend.open()
    try:
        lp, _, _ = joined(await collect(backend, request(k=4)))
    finally:
        await backend.aclose()
    np.testing.assert_array_equal(lp, np.tile(CONFIDENT[:4], (lp.shape[0], 1)))


async def test_request_bodies(scripted_server, monkeypatch):
    """Chat: messages with the system prompt, logprobs+top_logprobs, seed, top_k only when
    set, stop, include_usage; completions: the raw prompt and logprobs=k; the API key from
    $OPENAI_API_KEY goes out as a Bearer header."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    chat = backend_for(scripted_server, model="m")
    comp = backend_for(scripted_server, model="m", api="completions")
    await collect(chat, request(seed=42, k=3, system="Be brief.", top_k=20, stop=["</s>"]))
    await collect(comp, request(prompt="<raw>", k=3))
    await chat.aclose()
    await comp.aclose()
    b_chat, b_comp = scripted_server.streams[1].body, scripted_server.streams[3].body
    assert b_chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3+4?"},
    ]
    assert (b_chat["logprobs"], b_chat["top_logprobs"], b_chat["seed"]) == (True, 3, 42)
    assert (b_chat["top_k"], b_chat["stop"], b_chat["n"]) == (20, ["</s>"], 1)
    assert b_chat["stream_options"] == {"include_usage": True}
    assert (b_comp["prompt"], b_comp["logprobs"]) == ("<raw>", 3)
    assert "seed" not in b_comp and "top_k" not in b_comp and "messages" not in b_comp
    assert scripted_server.streams[1].headers["authorization"] == "Bearer sk-test-123"


async def test_no_key_sends_no_authorization_header(scripted_server, monkeypatch):
    """Without --api-key or $OPENAI_API_KEY the request has no Authorization header (not
    "Bearer None", which a server with keys would log as a bad key)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = backend_for(scripted_server, model="m", probe=False)
    await collect(backend, request())
    await backend.aclose()
    assert "authorization" not in scripted_server.streams[0].headers


async def test_completions_rejects_chat_messages(scripted_server):
    """Chat messages on the completions API are a ConfigError telling the user what to do."""
    backend = backend_for(scripted_server, api="completions")
    with pytest.raises(ConfigError, match="--api chat"):
        await collect(backend, request(prompt=[{"role": "user", "content": "hi"}]))
    await backend.aclose()


async def test_probe_fewer_logprobs_names_max_logprobs(scripted_server):
    """A server capped below k (vLLM --max-logprobs) fails open() with a message naming
    the flag and the count it returned."""
    scripted_server.default = Script.from_text(TEXT, max_logprobs=5)
    backend = backend_for(scripted_server, top_logprobs=20)
    with pytest.raises(CapabilityError, match=r"returned 5 top logprobs.*--max-logprobs 20"):
        await backend.open()


@pytest.mark.parametrize(("api", "sent"), [("chat", "Say hello."), ("completions", "Hello")])
async def test_the_probe_speaks_the_api_it_probes(scripted_server, api, sent):
    """Chat gets the greeting as a user message, completions the raw text to continue."""
    backend = backend_for(scripted_server, api=api)
    await backend.open()
    await backend.aclose()
    probe = scripted_server.streams[0].body
    got = probe["messages"] if api == "chat" else probe["prompt"]
    assert got == ([{"role": "user", "content": sent}] if api == "chat" else sent)


async def test_probe_judges_the_fullest_position(scripted_server):
    """Short positions (collapsed entries), even most of them, do not fail the probe: a cap
    is the same everywhere, so one position with all k shows k is served."""
    script = Script.from_text("one two three four five")
    for token in script.tokens[:-1]:
        token.top = token.top[:19]
    scripted_server.default = script
    backend = backend_for(scripted_server, top_logprobs=20)
    await backend.open()  # raises CapabilityError if the short position decided
    assert backend._ok_k == 20
    await backend.aclose()


async def test_probe_no_logprobs(scripted_server):
    """A server that returns no logprobs at all is refused at open(), in words."""
    scripted_server.default = Script.from_text(TEXT, logprobs=False)
    with pytest.raises(CapabilityError, match="no logprobs"):
        await backend_for(scripted_server).open()


async def test_probe_placeholder_logprobs(scripted_server):
    """All-0 / -9999 logprobs (APIs that accept the parameter but fake it) are refused."""
    scripted_server.default = Script.from_text(TEXT, top=[0.0] + [-9999.0] * 25)
    with pytest.raises(CapabilityError, match="placeholder"):
        await backend_for(scripted_server).open()


async def test_retry_after_500(scripted_server):
    """A 500 before the first token is retried and the trace then streams normally."""
    backend = backend_for(scripted_server, model="m")
    scripted_server.fail_next(500)
    lp, text, _ = joined(await collect(backend, request()))
    await backend.aclose()
    assert lp.shape[0] == len(scripted_server.default.tokens)
    assert text == "".join(t.text for t in scripted_server.default.tokens)
    assert len(traces(scripted_server)) == 1
    assert len(scripted_server.requests) == 3  # probe, the 500, the retry


async def test_429_honours_retry_after(scripted_server):
    """A 429 with Retry-After: 0.3 waits (about) that long before retrying, though the
    backoff base is 10 ms."""
    backend = backend_for(scripted_server, model="m")
    scripted_server.fail_next(429, retry_after=0.3)
    start = time.monotonic()
    await collect(backend, request())
    await backend.aclose()
    assert time.monotonic() - start >= 0.25
    assert len(scripted_server.requests) == 2 + 1  # + the probe, which met the 429


async def test_4xx_not_retried_and_quoted(scripted_server):
    """A 400 is a RequestRejectedError quoting the server's reason, sent exactly once."""
    backend = backend_for(scripted_server, model="m")
    scripted_server.fail_next(400, message="max_tokens is too large for this model")
    with pytest.raises(RequestRejectedError, match="max_tokens is too large"):
        await collect(backend, request())
    await backend.aclose()
    assert len(scripted_server.requests) == 1  # the probe met it: open() fails, not retried


async def test_retries_give_up(scripted_server):
    """Persistent 503s raise after max_retries + 1 attempts instead of looping forever."""
    backend = backend_for(scripted_server, model="m", max_retries=2)
    for _ in range(3):
        scripted_server.fail_next(503)
    with pytest.raises(ServerError, match="503"):
        await collect(backend, request())
    await backend.aclose()
    assert len(scripted_server.requests) == 3


async def test_connect_error_when_nothing_listens():
    """A port with no server gives ConnectError saying to start the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = HttpBackendConfig(base_urls=[f"http://127.0.0.1:{port}"], model="m", max_retries=1)
    backend = OpenAIHttpBackend(cfg.model_copy(update={"backoff_base": 0.01}))
    with pytest.raises(ConnectError, match="start the server"):
        await collect(backend, request())
    await backend.aclose()


async def test_a_nan_logprob_is_named_by_its_token_in_the_whole_stream(scripted_server):
    """Tokens arrive over several reads (20 ms apart); the NaN at token 6 is named as token
    6 of the stream, not by its place in the read that carried it."""
    top = [-0.1, *(-5.0 - j for j in range(19))]
    tokens = [ScriptToken(f" t{i}", list(top)) for i in range(8)]
    tokens[5] = ScriptToken(" t5", [math.nan, *top[1:]])
    scripted_server.by_seed[1] = Script(tokens, delay=0.02)
    backend = backend_for(scripted_server, model="m", probe=False)
    with pytest.raises(StreamError, match="the server sent NaN as a logprob at token 6:"):
        await collect(backend, request(seed=1))
    await backend.aclose()


async def test_mid_stream_drop_is_stream_error(scripted_server):
    """A connection cut after tokens arrived is a StreamError (not retried: tokens were
    already consumed); the batches before it were delivered."""
    scripted_server.by_seed[1] = Script.from_text(TEXT + " " + TEXT, drop_after=4)
    backend = backend_for(scripted_server, model="m")
    got = []
    with pytest.raises(StreamError) as info:
        async with contextlib.aclosing(backend.stream(request(seed=1))) as stream:
            async for batch in stream:
                got.append(batch)
    await backend.aclose()
    assert sum(b.n_tokens for b in got) == 4
    url = scripted_server.base_url
    assert str(info.value).startswith(
        f"the stream from {url} broke mid-trace: the connection to {url} broke: "
    )
    assert len(traces(scripted_server)) == 1


async def test_in_stream_error_is_stream_error(scripted_server):
    """An {"error": ...} object mid-stream raises StreamError quoting it."""
    scripted_server.by_seed[1] = Script.from_text(TEXT, error_after=2)
    backend = backend_for(scripted_server, model="m")
    with pytest.raises(StreamError, match="scripted in-stream error"):
        await collect(backend, request(seed=1))
    await backend.aclose()


async def test_prune_closes_the_connection(scripted_server):
    """Closing the stream generator (what a prune does) closes the HTTP response: the
    server records the disconnect and stops sending, far short of the script's end."""
    long = Script.from_text(" ".join(["step"] * 400), delay=0.005)
    scripted_server.default = long
    backend = backend_for(scripted_server, model="m")
    stream = backend.stream(request())
    received = 0
    async for batch in stream:
        received += batch.n_tokens
        if received >= 10:
            break
    await stream.aclose()
    (rec,) = traces(scripted_server)
    assert scripted_server.wait_for(lambda: rec.disconnected, timeout=5)
    sent = rec.tokens_sent
    await asyncio.sleep(0.1)
    assert rec.tokens_sent == sent < 100 and not rec.finished
    await backend.aclose()


async def test_routing_spreads_over_two_servers():
    """With two endpoints, concurrent traces go to both (least in flight)."""
    script = Script.from_text(TEXT, delay=0.01)
    with ScriptedServer(script) as a, ScriptedServer(script) as b:
        backend = backend_for(a, b, model="m")
        await asyncio.gather(*(collect(backend, request(seed=i)) for i in range(8)))
        await backend.aclose()
        assert len(traces(a)) == len(traces(b)) == 4


def test_endpoint_pool_least_in_flight():
    """acquire() picks the least-busy URL, rotates among ties, and can avoid a failed one."""
    pool = EndpointPool(["a", "b", "c"])
    assert [pool.acquire() for _ in range(3)] == ["a", "b", "c"]
    pool.release("b")
    assert pool.acquire() == "b"
    pool.release("a")
    assert pool.acquire(avoid="a") in ("b", "c")


def test_retry_delay_backoff_and_retry_after():
    """Backoff doubles per attempt (with jitter in [0.5, 1.5)) up to the cap; a server's
    Retry-After wins, capped."""
    assert 0.25 <= retry_delay(0, base=0.5) < 0.75
    assert 1.0 <= retry_delay(2, base=0.5) < 3.0
    assert retry_delay(10, base=0.5, cap=5.0) < 7.5
    assert retry_delay(3, retry_after=1.5) == 1.5
    assert retry_delay(0, retry_after=1000, cap=30) == 30


async def test_requests_per_second_paces_request_starts(scripted_server):
    """requests_per_second=10 lets 10 requests start per second: 13 (probe included)
    cannot all start within the first second."""
    backend = backend_for(scripted_server, requests_per_second=10, top_logprobs=3)
    start = time.monotonic()
    await backend.open()
    await asyncio.gather(*(collect(backend, request(seed=i, k=3)) for i in range(12)))
    await backend.aclose()
    assert time.monotonic() - start >= 0.9


def test_base_url_normalised():
    """A bare host gets /v1; a trailing slash is dropped; a non-http URL is refused."""
    cfg = HttpBackendConfig(base_urls=["http://h:8000/", "http://h:9000/v1/", "http://p/x"])
    assert cfg.base_urls == ["http://h:8000/v1", "http://h:9000/v1", "http://p/x"]
    with pytest.raises(ValueError, match="http://"):
        HttpBackendConfig(base_urls=["localhost:8000"])


# --- end to end: DeepConf online over the real server -------------------------------------------

SEED = 100
CONFIDENT_7 = Script.from_text(TEXT, reasoning=REASONING, tokens_per_chunk=2)
# Online, the confident traces are paced to end after the unconfident ones were pruned
# (else consensus would cancel those first).
CONFIDENT_7_SLOW = Script.from_text(TEXT, reasoning=REASONING, tokens_per_chunk=2, delay=0.03)
CONFIDENT_5 = Script.from_text("So \\boxed{5}.", reasoning=REASONING)
# Long and paced, so a prune (window 8) lands while the server still has ~190 tokens to send.
UNCONFIDENT_3 = Script.from_text(
    " ".join(["maybe"] * 200) + " \\boxed{3}", confident=False, delay=0.003
)


UNCONFIDENT_3_SHORT = Script.from_text(" ".join(["maybe"] * 20) + " \\boxed{3}", confident=False)


def deepconf_script(number: int, body: dict) -> Script | None:
    """Trace i has seed SEED + i. Warm-up (0..3): 7, 7, 5 confident and one unconfident 3
    that runs to completion (warm-up is never pruned). Online: even traces unconfident 3,
    odd ones confident 7."""
    index = body["seed"] - SEED
    if index < 4:
        return [CONFIDENT_7, CONFIDENT_7, CONFIDENT_5, UNCONFIDENT_3_SHORT][index]
    return UNCONFIDENT_3 if index % 2 == 0 else CONFIDENT_7_SLOW


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_deepconf_online_end_to_end(api):
    """DeepConf-high over HTTP: the threshold from warm-up sits between the two confidence
    levels; every online unconfident trace is pruned a few tokens after its window fills,
    and the server saw that stream disconnected long before its end; the vote is the
    confident answer 7 and the confident minority answer 3 never votes."""
    from deepconf.config import ConfidenceConfig, DeepConfConfig
    from deepconf.controller import DeepConf
    from deepconf.trace import TraceStatus

    config = DeepConfConfig(
        mode="online",
        variant="high",
        warmup=4,
        budget=12,
        tau=0.8,
        concurrency=4,
        confidence=ConfidenceConfig(window=8),
        sampling=SamplingConfig(seed=SEED, max_tokens=400),
    )
    with ScriptedServer(
        choose=lambda n, body: deepconf_script(n, body) if "seed" in body else None
    ) as server:
        backend = backend_for(server, api=api)
        try:
            result = await DeepConf(backend, config).solve("What is 3+4?")
        finally:
            await backend.aclose()
        by_seed = {r.seed: r for r in traces(server)}

    assert result.answer == "7"
    assert {v.answer for v in result.votes} == {"7", "5"}
    warm = [t for t in result.traces if t.phase == "warmup"]
    assert [t.status for t in warm] == [TraceStatus.COMPLETED] * 4
    # The warm-up is deterministic (four scripted traces), so the threshold is exact: the
    # 90th percentile of their lowest-group confidences (to 1e-5: a tie tolerance may lower
    # it by a relative 1e-6).
    assert result.threshold == pytest.approx(5.75914424085, abs=1e-5)
    pruned = [t for t in result.traces if t.status is TraceStatus.PRUNED]
    # Traces 4 and 6 start with the online phase and prune after 8 tokens (0.024 s), long
    # before the slow confident 7s end (0.18 s); later even traces may be cancelled instead.
    assert {4, 6} <= {t.index for t in pruned}
    for t in pruned:
        # the first full window (8 tokens) is below the threshold; a read may carry more
        assert t.index % 2 == 0 and t.pruned_at == 8 and 8 <= t.tokens < 50
        rec = by_seed[t.seed]
        assert server.wait_for(lambda rec=rec: rec.disconnected), f"trace {t.index} not closed"
        assert rec.tokens_sent < 100 < rec.tokens_total and not rec.finished
    # Everything that did not end on its own was closed on the server, too. A trace
    # cancelled before its first token may have been cancelled before its request reached
    # the server (seen under load): then there is nothing there to close.
    for t in result.traces:
        if t.status is TraceStatus.CANCELLED:
            if t.tokens == 0 and t.seed not in by_seed:
                continue
            assert server.wait_for(lambda t=t: by_seed[t.seed].disconnected)


async def test_scripted_server_selects_by_request_number(scripted_server):
    """`choose` sees the streamed-request count (probe = 0), so tests can script traces in
    order; a seed listed in by_seed takes precedence."""
    scripted_server.choose = lambda n, body: Script.from_text(f"reply {n}")
    scripted_server.by_seed[9] = Script.from_text("seeded")
    backend = backend_for(scripted_server)
    texts = [joined(await collect(backend, request(seed=s)))[1] for s in (None, 9, None)]
    await backend.aclose()
    assert texts == ["reply 1", "seeded", "reply 3"]


async def test_default_probe_defers_a_short_k_to_the_traces(scripted_server, caplog):
    """With no k in the config, a server capped at 5 still opens, warning with the error a
    trace asking for more will get; traces asking for 5 run, and a trace asking for 20
    fails at once, before any request, with that same error."""
    scripted_server.default = Script.from_text(TEXT, max_logprobs=5)
    backend = backend_for(scripted_server)
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.openai_http"):
        await backend.open()
    lp, _, _ = joined(await collect(backend, request(k=5)))
    assert lp.shape[1] == 5 and not np.isnan(lp).any()
    sent = len(scripted_server.requests)
    with pytest.raises(CapabilityError, match="--max-logprobs 20") as info:
        await collect(backend, request(k=20))
    assert len(scripted_server.requests) == sent
    assert [r.getMessage() for r in caplog.records] == [str(info.value)]
    await backend.aclose()


async def test_model_discovery_failure_says_pass_model():
    """A server whose /v1/models is unusable fails open() with a ConfigError saying --model."""
    # The server lists {"id": ""}: no usable name.
    with ScriptedServer(model="") as server, pytest.raises(ConfigError, match="pass --model"):
        await backend_for(server).open()


def test_stream_benchmark_paths_agree():
    """The throughput benchmark's paths (deepconf with and without its C parts, the backend
    over httpx, orjson, json, the openai SDK) count the same tokens and reach the same lowest
    group confidence on the same bytes, so its figures compare like with like (bench()
    asserts both)."""
    from deepconf.eval.bench_stream import bench

    rows = bench(n_tokens=60, per_chunk=3, window=16, repeats=1)
    assert len(rows) == 7 and all(r.tokens_per_s > 0 for r in rows)
    assert len({round(r.lowest, 9) for r in rows}) == 1


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of backends/openai_http.py that every test above let through.


async def test_request_bodies_carry_every_sampling_field(scripted_server):
    """The whole body, key by key, for both APIs: stream with usage, n=1, the sampling
    settings as given, k in each API's own field; no seed, top_k or stop unless set."""
    sampling = SamplingConfig(temperature=0.3, top_p=0.7, max_tokens=50)
    req = TraceRequest(0, "What is 3+4?", sampling, top_logprobs=4)
    for api in ("chat", "completions"):
        backend = backend_for(scripted_server, model="m", api=api, probe=False)
        await collect(backend, req)
        await backend.aclose()
    chat, comp = (s.body for s in scripted_server.streams)
    common = {
        "model": "m",
        "stream": True,
        "n": 1,
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.7,
        "stream_options": {"include_usage": True},
    }
    assert chat == {
        **common,
        "messages": [{"role": "user", "content": "What is 3+4?"}],
        "logprobs": True,
        "top_logprobs": 4,
    }
    assert comp == {**common, "prompt": "What is 3+4?", "logprobs": 4}
    headers = scripted_server.streams[0].headers
    assert headers["content-type"] == "application/json"


async def test_chat_messages_keep_a_given_system_prompt_and_need_roles(scripted_server):
    """Messages are sent as given; the configured system prompt is put first only when the
    messages have none; a message without a role is refused before any request."""
    backend = backend_for(scripted_server, model="m", probe=False)
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]
    await collect(backend, request(prompt=own, system="Theirs."))
    assert scripted_server.streams[-1].body["messages"] == own
    await collect(backend, request(prompt=[{"role": "user", "content": "hi"}], system="S."))
    assert scripted_server.streams[-1].body["messages"] == [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "hi"},
    ]
    sent = len(scripted_server.requests)
    with pytest.raises(ConfigError, match=r"chat messages need a 'role' and 'content', got"):
        await collect(backend, request(prompt=[{"content": "no role"}]))
    assert len(scripted_server.requests) == sent
    await backend.aclose()


async def test_completions_refuse_a_system_prompt(scripted_server):
    backend = backend_for(scripted_server, model="m", api="completions", probe=False)
    with pytest.raises(ConfigError, match="a system prompt needs --api chat"):
        await collect(backend, request(prompt="raw", system="Be brief."))
    await backend.aclose()
    assert scripted_server.streams == []


@pytest.mark.parametrize(("rps", "rate", "period"), [(10.0, 10, 1.0), (2.5, 2, 0.8), (0.5, 1, 2.0)])
async def test_requests_per_second_becomes_a_whole_count_per_period(
    scripted_server, rps, rate, period
):
    """The throttler takes a whole number of requests per period: 2.5/s is 2 per 0.8 s,
    0.5/s is 1 per 2 s (never 0 per period)."""
    backend = backend_for(scripted_server, model="m", probe=False, requests_per_second=rps)
    await backend.open()
    assert (backend._throttler.rate_limit, backend._throttler.period) == (rate, period)
    await backend.aclose()


async def test_open_is_done_once_and_undone_by_a_failure_or_aclose(scripted_server):
    """open() probes once however often it is called; a failed open() leaves no client
    behind (the next call tries again); aclose() forgets what the probe learnt."""
    backend = backend_for(scripted_server)
    await backend.open()
    await backend.open()
    assert len(scripted_server.streams) == 1 and backend._ok_k == 20
    await backend.aclose()
    assert (backend._client, backend._ok_k) == (None, 0)
    scripted_server.default = Script.from_text(TEXT, logprobs=False)
    with pytest.raises(CapabilityError):
        await backend.open()
    assert backend._client is None
    scripted_server.default = Script.from_text(TEXT)
    await backend.open()  # the server was fixed: opens now
    assert backend._ok_k == 20
    await backend.aclose()


async def test_a_smaller_k_needs_no_new_probe_and_a_larger_one_does(scripted_server):
    backend = backend_for(scripted_server, top_logprobs=5)
    await backend.open()
    await collect(backend, request(k=3))
    await collect(backend, request(k=5))
    assert (
        sum(
            s.seed is None and s.body.get("max_tokens") == PROBE_TOKENS
            for s in scripted_server.streams
        )
        == 1
    )
    await collect(backend, request(k=8))
    probes = [s for s in scripted_server.streams if s.body.get("max_tokens") == PROBE_TOKENS]
    assert [p.body["top_logprobs"] for p in probes] == [5, 8]
    await backend.aclose()


async def test_model_discovery_tries_each_base_url_and_reports_each_failure():
    """The first base URL that lists a model names it; when none does, the error quotes
    what each one said, in order, and says to pass --model."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with ScriptedServer(model="") as nameless, ScriptedServer(model="real") as named:
        backend = backend_for(nameless, named, probe=False)
        await backend.open()
        assert backend.model == "real"
        await backend.aclose()
        cfg = HttpBackendConfig(base_urls=[dead, nameless.base_url], probe=False)
        with pytest.raises(ConfigError) as info:
            await OpenAIHttpBackend(cfg).open()
    said = str(info.value)
    assert said.startswith(f"could not discover the model name (cannot connect to {dead} (")
    assert said.endswith(
        f"; {nameless.base_url}/models lists no model: "
        + repr('{"object": "list", "data": [{"id": ""}]}')
        + "): pass --model (model= in HttpBackendConfig)"
    )


class _ModelsRefused(http.server.BaseHTTPRequestHandler):
    """/v1/models answers 401 with an OpenAI-shaped error, as a server with a key set does."""

    status = 401

    def do_GET(self) -> None:
        body = json.dumps({"error": {"message": "Invalid API key", "type": "auth"}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def models_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback http.server with `handler`; yields its base URL (ending in /v1)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def test_model_discovery_reports_a_refused_models_request_as_the_refusal():
    """/models answered 401: a model name would not help (the traces would get 401 too), so
    the error is the refusal itself, saying to check the key, with no word of --model.
    Beside a server without a model it is quoted among the failures."""
    with models_server(_ModelsRefused) as url:
        with pytest.raises(RequestRejectedError) as alone:
            await OpenAIHttpBackend(HttpBackendConfig(base_urls=[url], probe=False)).open()
        with ScriptedServer(model="") as nameless, pytest.raises(ConfigError) as mixed:
            cfg = HttpBackendConfig(base_urls=[url, nameless.base_url], probe=False)
            await OpenAIHttpBackend(cfg).open()
    refusal = (
        f"{url} rejected the request (HTTP 401): Invalid API key; check --api-key or"
        " $OPENAI_API_KEY"
    )
    assert str(alone.value) == refusal and alone.value.status == 401
    said = str(mixed.value)
    assert said.startswith(f"could not discover the model name ({refusal}; {nameless.base_url}")
    assert said.endswith("): pass --model (model= in HttpBackendConfig)")


async def test_model_discovery_refused_by_one_server_and_unreachable_at_another():
    """Every base URL failed, none for want of a model name (one refused, one down): the
    error quotes each failure in order, as a ConfigError, with no word of --model."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with models_server(_ModelsRefused) as url, pytest.raises(ConfigError) as info:
        await OpenAIHttpBackend(HttpBackendConfig(base_urls=[url, dead], probe=False)).open()
    said = str(info.value)
    assert said.startswith(
        f"no base URL gave a model: {url} rejected the request (HTTP 401): Invalid API key;"
        f" check --api-key or $OPENAI_API_KEY; cannot connect to {dead} ("
    )
    assert said.endswith("start the server or fix --base-url") and "--model" not in said
    assert not isinstance(info.value, ConnectError)


class _NoModelsRoute(_ModelsRefused):
    status = 404


async def test_a_server_without_a_models_route_is_told_to_pass_model():
    """/models answered 404 (a proxy or a minimal server without the route): naming the
    model is the fix, and the error says so."""
    with models_server(_NoModelsRoute) as url, pytest.raises(ConfigError) as info:
        await OpenAIHttpBackend(HttpBackendConfig(base_urls=[url], probe=False)).open()
    said = str(info.value)
    assert said.startswith(f"could not discover the model name ({url}")
    assert "HTTP 404" in said and said.endswith("): pass --model (model= in HttpBackendConfig)")


async def test_model_discovery_with_no_server_up_is_about_the_server():
    """When no base URL answers at all, naming a model would not help: the error is the
    ConnectError that says to start the server, with no word of --model."""
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    with pytest.raises(ConnectError) as one:
        await OpenAIHttpBackend(HttpBackendConfig(base_urls=dead[:1], probe=False)).open()
    assert str(one.value).startswith(f"cannot connect to {dead[0]} (")
    assert str(one.value).endswith("start the server or fix --base-url")
    with pytest.raises(ConnectError) as both:
        await OpenAIHttpBackend(HttpBackendConfig(base_urls=dead, probe=False)).open()
    said = str(both.value)
    assert said.startswith(f"no base URL answered: cannot connect to {dead[0]} (")
    assert f"; cannot connect to {dead[1]} (" in said and "--model" not in said


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_retry_that_would_end_past_the_trace_deadline_is_not_made(scripted_server):
    """With a 0.5 s trace limit and a first backoff of at least 5 s (10 s base, jitter >=
    0.5), a 503 is raised at once: one request, no sleep past the deadline."""
    backend = backend_for(
        scripted_server, model="m", probe=False, trace_timeout=0.5, backoff_base=10.0
    )
    scripted_server.fail_next(503)
    with pytest.raises(ServerError, match="503"):
        await collect(backend, request())
    await backend.aclose()
    assert len(scripted_server.requests) == 1


async def test_a_retry_goes_to_another_endpoint():
    """The endpoint that failed is avoided on the retry when another is healthy, even
    though both are idle (least in flight would pick the first again)."""
    with ScriptedServer() as a, ScriptedServer() as b:
        a.fail_next(503)
        backend = backend_for(a, b, model="m", probe=False)
        batches = await collect(backend, request())
        await backend.aclose()
        assert [len(a.requests), len(b.requests)] == [1, 1]
        assert a.streams == [] and len(b.streams) == 1
    assert any(batch.finish_reason == "stop" for batch in batches)


async def test_failures_are_counted_by_kind_in_the_closing_summary(scripted_server, caplog):
    """429s are counted as rate limits, 5xx as the server failing; a 4xx is the request's
    fault, not the endpoint's, and is not counted; aclose() logs one line per server."""
    backend = backend_for(scripted_server, model="m", probe=False, max_retries=3)
    scripted_server.fail_next(429, retry_after=0)
    scripted_server.fail_next(503)
    await collect(backend, request())
    scripted_server.fail_next(400)
    with pytest.raises(RequestRejectedError):
        await collect(backend, request())
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.openai_http"):
        await backend.aclose()
    url = scripted_server.base_url
    assert [r.getMessage() for r in caplog.records if "failed request" in r.getMessage()] == [
        f"{url}: 2 failed request(s) (rate limited (429) 1, server error (5xx) 1)"
    ]


async def test_retries_are_logged_once_per_server_then_quietly(scripted_server, caplog):
    """The first retry against a server is a warning naming the trace; later ones are
    debug lines (the summary at aclose() counts them all)."""
    backend = backend_for(scripted_server, model="m", probe=False)
    scripted_server.fail_next(503)
    scripted_server.fail_next(503)
    with caplog.at_level(logging.DEBUG, logger="deepconf.backends.openai_http"):
        await collect(backend, TraceRequest(0, "q", SamplingConfig(), top_logprobs=20))
    retries = [(r.levelno, r.getMessage()) for r in caplog.records if "retrying" in r.getMessage()]
    assert [level for level, _ in retries] == [logging.WARNING, logging.DEBUG]
    assert retries[0][1].startswith("retrying trace 0 in ")  # trace 0 is a trace
    assert retries[0][1].endswith(
        f"s: {scripted_server.base_url} failed with HTTP 503: scripted failure 503"
    )
    await backend.aclose()


async def test_a_stream_cut_by_done_names_the_interrupt_only_while_others_are_in_flight(
    scripted_server,
):
    """[DONE] without a finish reason fails the trace; the llama-cpp-python hint appears
    when another stream to the server was open at the time, not otherwise."""
    scripted_server.by_seed = {
        1: Script.from_text(TEXT * 4, stall_after=1),  # stays open until closed
        2: Script.from_text(TEXT, finish_reason=None),
    }
    backend = backend_for(scripted_server, model="m", probe=False)
    with pytest.raises(StreamError, match=r"\(a server or proxy cut the trace short\)$"):
        await collect(backend, request(seed=2))
    async with contextlib.aclosing(backend.stream(request(seed=1))) as held:
        await anext(held)  # trace 1 is in flight from here on
        with pytest.raises(StreamError, match="--interrupt_requests false"):
            await collect(backend, request(seed=2))
    await backend.aclose()


@pytest.mark.parametrize("finish", ["stop", None])
async def test_a_stream_that_closes_without_done_counts_only_with_a_finish_reason(
    scripted_server, finish
):
    """A body that just ends (no [DONE]) after the last token: with a finish reason the
    trace counts; without one it is a cut, named as such."""
    scripted_server.default = Script.from_text(TEXT, finish_reason=finish, end="close")
    backend = backend_for(scripted_server, model="m", probe=False)
    if finish is None:
        with pytest.raises(StreamError, match="without a finish reason or \\[DONE\\]"):
            await collect(backend, request())
    else:
        batches = await collect(backend, request())
        assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
    await backend.aclose()


def sse_body(*chunks: dict, last_terminated: bool = True) -> bytes:
    events = [b"data: " + json.dumps(c).encode() for c in chunks]
    return b"\n\n".join(events) + (b"\n\n" if last_terminated else b"")


def chat_token(text: str, finish: str | None = None) -> dict:
    top = [{"token": text, "logprob": v} for v in CONFIDENT[:4]]
    entry = {"token": text, "logprob": CONFIDENT[0], "top_logprobs": top}
    choice = {"index": 0, "delta": {"content": text}, "logprobs": {"content": [entry]}}
    return {"choices": [{**choice, "finish_reason": finish}]}


async def test_an_unterminated_last_event_is_still_read_when_the_body_ends():
    """A server that closes right after its last event's data line, without the blank line
    that ends an event: that event (here the last token with the finish reason) is read at
    the end of the body, so the trace counts. Byte-exact, hence httpx.MockTransport."""
    body = sse_body(chat_token("The"), chat_token(" end", "stop"), last_terminated=False)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    cfg = HttpBackendConfig(base_urls=["http://mock/v1"], model="m", probe=False)
    backend = OpenAIHttpBackend(cfg, transport=httpx.MockTransport(handler))
    batches = await collect(backend, TraceRequest(0, "q", SamplingConfig(), top_logprobs=4))
    await backend.aclose()
    lp, text, _ = joined(batches)
    assert (lp.shape, text) == ((2, 4), "The end")
    assert [b.finish_reason for b in batches] == [None, "stop"]


async def _mock_stream(body: bytes) -> list[TokenBatch]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    cfg = HttpBackendConfig(base_urls=["http://mock/v1"], model="m", probe=False)
    backend = OpenAIHttpBackend(cfg, transport=httpx.MockTransport(handler))
    try:
        return await collect(backend, TraceRequest(0, "q", SamplingConfig(), top_logprobs=4))
    finally:
        await backend.aclose()


async def test_an_unterminated_last_event_is_judged_like_any_other():
    """The event read at the end of the body counts as fully as the others: a NaN in it is
    named by its token in the whole stream (3), and a [DONE] there ends the stream, so a
    stream without a finish reason is refused for exactly that."""
    nan = chat_token(" c")
    nan["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = math.nan
    with_nan = sse_body(chat_token("a"), chat_token(" b")) + b"data: " + json.dumps(nan).encode()
    with pytest.raises(StreamError, match="the server sent NaN as a logprob at token 3:"):
        await _mock_stream(with_nan)
    done_last = sse_body(chat_token("a"), chat_token(" b")) + b"data: [DONE]"
    with pytest.raises(StreamError, match=r"^the stream from http://mock/v1 ended with \[DONE\]"):
        await _mock_stream(done_last)


async def test_every_read_that_carries_something_reaches_the_controller():
    """Reads arrive one by one: a token with empty text (a special token), a chunk with only
    the finish reason (as vLLM ends a stream), one with only usage. Each is a batch the
    controller gets: the token counts, "length" marks the trace truncated, usage is read."""
    silent = chat_token("")  # logprobs, but no text
    finish = {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    pieces = [sse_body(c) for c in (chat_token("a"), silent, finish, usage)] + [b"data: [DONE]\n\n"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    cfg = HttpBackendConfig(base_urls=["http://mock/v1"], model="m", probe=False)
    backend = OpenAIHttpBackend(cfg, transport=httpx.MockTransport(handler))
    batches = await collect(backend, TraceRequest(0, "q", SamplingConfig(), top_logprobs=4))
    await backend.aclose()
    assert [(b.n_tokens, b.text, b.finish_reason) for b in batches] == [
        (1, "a", None),
        (1, "", None),
        (0, "", "length"),
        (0, "", None),
    ]
    assert batches[-1].usage == {"prompt_tokens": 3, "completion_tokens": 2}


async def test_a_failed_probe_is_retried_and_logged_as_the_probe(scripted_server, caplog):
    backend = backend_for(scripted_server)
    scripted_server.fail_next(503)
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.openai_http"):
        await backend.open()
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1 and retries[0].startswith("retrying the probe in ")
    await backend.aclose()


async def test_max_retries_is_the_number_of_retries(scripted_server):
    """max_retries=1: two attempts in all, then the error (a third would have succeeded)."""
    backend = backend_for(scripted_server, model="m", probe=False, max_retries=1)
    for _ in range(2):
        scripted_server.fail_next(503)
    with pytest.raises(ServerError):
        await collect(backend, request())
    assert len(scripted_server.requests) == 2
    await backend.aclose()


async def test_the_backend_opens_at_most_max_connections():
    """max_connections=2: trace 1 stalls, trace 2 streams slowly; trace 3, begun meanwhile,
    waits for a connection and takes trace 2's when it ends, rather than opening a third.
    (Trace 2 reads on past [DONE] to the body's end, so its connection is reusable: a full
    run under load once saw a third connection when it closed after [DONE] instead.)"""
    slow = Script.from_text(" ".join(["step"] * 20) + " " + TEXT, delay=0.05)
    by_seed = {1: Script.from_text(TEXT, stall_after=1), 2: slow}
    with ScriptedServer(by_seed=by_seed) as server:
        backend = backend_for(server, model="m", probe=False, max_connections=2)
        held = asyncio.create_task(collect(backend, request(seed=1)))
        assert await asyncio.to_thread(server.wait_for, lambda: len(server.streams) == 1, 60)
        second = asyncio.create_task(collect(backend, request(seed=2)))
        assert await asyncio.to_thread(server.wait_for, lambda: len(server.streams) == 2, 60)
        third = await collect(backend, request(seed=3))
        for batches in (await second, third):
            assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        await backend.aclose()
    clients = [s.client for s in server.streams]
    assert len(set(clients)) == 2 and clients[2] == clients[1]


async def test_a_retry_goes_to_another_server():
    """A retry avoids the server that just failed even when it is the least loaded: B holds
    a stalled stream, so trace T goes to A, which fails with 503; T's retry goes to B, not
    back to A (which would have answered this time)."""
    stall = Script.from_text(TEXT, stall_after=1)
    with ScriptedServer() as a, ScriptedServer(by_seed={1: stall}) as b:
        backend = backend_for(a, b, model="m", probe=False)
        await collect(backend, request(seed=0))  # to A: B is next in order
        held = asyncio.create_task(collect(backend, request(seed=1)))  # B, stalls
        assert await asyncio.to_thread(b.wait_for, lambda: len(b.streams) == 1, timeout=60)
        a.fail_next(503)
        batches = await collect(backend, request(seed=2))
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        await backend.aclose()
        # The usage chunk may come in the finish reason's read or in one of its own.
        assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
        assert (len(a.requests), [s.seed for s in b.streams]) == (2, [1, 2])


@pytest.mark.parametrize(
    ("base", "cap", "retried"),
    [(5.0, 30.0, False), (5.0, 0.01, True)],
)
async def test_the_configured_backoff_sets_the_retry_delay(scripted_server, base, cap, retried):
    """With a 1 s trace limit, a 5 s first backoff would overrun it, so the trace fails at
    once; capped at 0.01 s, it is retried and completes. Each setting is the config's own."""
    backend = OpenAIHttpBackend(
        HttpBackendConfig(
            base_urls=[scripted_server.base_url], model="m", probe=False, trace_timeout=1.0,
            backoff_base=base, backoff_cap=cap,
        )
    )  # fmt: skip
    scripted_server.fail_next(503)
    if retried:
        batches = await collect(backend, request())
        assert [b.finish_reason for b in batches if b.finish_reason] == ["stop"]
    else:
        with pytest.raises(ServerError):
            await collect(backend, request())
    assert len(scripted_server.requests) == 1 + retried
    await backend.aclose()


async def test_a_stream_that_confirms_k_spares_later_traces_the_check(scripted_server):
    """Unprobed (--no-probe), the first trace's fullest position confirms k; from then on
    the backend knows k is served, as if a probe had said so."""
    scripted_server.default = Script.from_text(TEXT * 3)
    backend = backend_for(scripted_server, model="m", probe=False)
    assert backend._ok_k == 0
    await collect(backend, request(k=20))
    assert backend._ok_k == 20
    await backend.aclose()


async def test_completions_refusals_say_what_to_do_word_for_word(scripted_server):
    backend = backend_for(scripted_server, model="m", api="completions", probe=False)
    with pytest.raises(ConfigError) as info:
        await collect(backend, request(prompt=[{"role": "user", "content": "hi"}]))
    assert str(info.value) == (
        "the completions API takes a raw prompt string, not chat messages: use --api chat, or"
        " pass a prompt already rendered with the model's chat template"
    )
    with pytest.raises(ConfigError) as info:
        await collect(backend, request(prompt="raw", system="Be brief."))
    assert str(info.value) == (
        "a system prompt needs --api chat; with --api completions put it in the raw prompt"
    )
    await backend.aclose()


async def test_rate_limits_never_take_an_endpoint_out_of_the_rotation():
    """Three 429s in a row from one of two servers (each trace's retry goes to the other):
    the busy server still gets the next trace, since a 429 says busy, not unwell."""
    with ScriptedServer() as a, ScriptedServer() as b:
        backend = backend_for(a, b, model="m", probe=False)
        for _ in range(3):
            a.fail_next(429, retry_after=0)
            await collect(backend, request())
        assert (len(a.streams), len(b.streams)) == (0, 3)
        await collect(backend, request())
        await backend.aclose()
        assert (len(a.streams), len(b.streams)) == (1, 3)


async def test_leaving_the_rotation_is_logged_with_the_cause_only_when_there_is_another(
    scripted_server, caplog
):
    """With a live second server, a dead one leaving the rotation is logged once with the
    count, the cause and the cooldown; with a single server there is nowhere else to go, so
    nothing is said about a rotation."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = HttpBackendConfig(base_urls=[dead, scripted_server.base_url], model="m", probe=False)
    backend = OpenAIHttpBackend(cfg.model_copy(update={"backoff_base": 0.001}))
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.openai_http"):
        for i in range(4):
            await collect(backend, request(seed=i))
        await backend.aclose()
    left = [r.getMessage() for r in caplog.records if "left the rotation after" in r.getMessage()]
    assert len(left) == 1
    assert re.fullmatch(
        rf"{re.escape(dead)} left the rotation after 3 failures in a row \(cannot connect to"
        rf" {re.escape(dead)} \(.+\): start the server or fix --base-url\); a trace probes it"
        r" again in 5s",
        left[0],
    )
    caplog.clear()
    alone = HttpBackendConfig(base_urls=[dead], model="m", probe=False, max_retries=3)
    backend = OpenAIHttpBackend(alone.model_copy(update={"backoff_base": 0.001}))
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.openai_http"):
        with pytest.raises(ConnectError):
            await collect(backend, request())
        await backend.aclose()
    assert not any("left the rotation after" in r.getMessage() for r in caplog.records)


async def test_a_stalled_stream_says_so_word_for_word(scripted_server):
    """A server that sends two tokens and then nothing (the connection open) fails the trace
    once the token deadline passes, with the message that names the flag."""
    scripted_server.default = Script.from_text(TEXT, stall_after=2)
    backend = backend_for(scripted_server, model="m", probe=False, token_timeout=0.2)
    with pytest.raises(StreamError) as info:
        await collect(backend, request())
    await backend.aclose()
    assert str(info.value) == (
        f"no token from {scripted_server.base_url} for 0.2 s after 2 tokens (--timeout): the"
        " server stalled (keep-alive comments and empty events do not count as progress)"
    )
