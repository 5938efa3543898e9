"""`serve-model` over a tiny random Falcon-H1 checkpoint: the real openai client, vLLM's
logprob shapes, usage, errors, batching of concurrent requests and abort on disconnect."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest
from support.fake_model import FakeModel, FakeTokenizer
from support.live_server import LoopbackServer
from support.tiny_model import write_tiny_model

from deepconf.backends.async_engine import AsyncEngine
from deepconf.backends.bundled import load_engine
from deepconf.backends.engine import Engine
from deepconf.backends.model_server import create_app

MESSAGES = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    # A long context so the disconnect test's max_tokens cannot finish before the close.
    engine, tok, name, _ = load_engine(folder, max_batch=8, max_len=30_000)
    srv = LoopbackServer(create_app(engine, tok, model_name=name)).start()
    yield srv
    srv.stop()
    engine.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


def test_models_lists_the_checkpoint(client):
    """GET /v1/models names the served checkpoint (the folder name)."""
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_logprobs_have_vllm_shape(client):
    """Chat logprobs.content has one entry per generated token (usage.completion_tokens), each
    with token/logprob/bytes and a top_logprobs list of exactly K, the sampled token first and
    the rest in descending order; the same seed gives the same text."""
    kw = dict(
        model="tiny",
        messages=MESSAGES,
        max_tokens=12,
        seed=3,
        temperature=1.0,
        logprobs=True,
        top_logprobs=5,
    )
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    for entry in content:
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == entry.logprob
        rest = [t.logprob for t in entry.top_logprobs[1:]]
        assert rest == sorted(rest, reverse=True)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    again = client.chat.completions.create(**kw)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_chat_stream_matches_whole_response_and_sends_usage(client):
    """A streamed chat (same seed) carries the same text and logprob entries as the
    non-streamed one; the first chunk has the role, a last chunk has choices [] and usage."""
    kw = dict(
        model="tiny",
        messages=MESSAGES,
        max_tokens=20,
        seed=11,
        temperature=0.8,
        logprobs=True,
        top_logprobs=3,
    )
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    body = [c for c in chunks[1:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    entries = [e for c in body for e in (c.choices[0].logprobs.content or [])]
    assert text == whole.choices[0].message.content
    assert [e.token for e in entries] == [e.token for e in whole.choices[0].logprobs.content]
    assert body[-1].choices[0].finish_reason == "length"


def test_completions_logprobs_have_vllm_shape(client):
    """Completions logprobs: tokens, token_logprobs, text_offset and one dict per token with
    at most K+1 entries whose first key is the sampled token; streaming gives the same."""
    kw = dict(model="tiny", prompt="Problem: 1+1\n", max_tokens=10, seed=5, logprobs=4)
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 10
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 5 and next(iter(top)) == token and top[token] == logprob
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    stream = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text
    assert [t for c in stream for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert stream[-1].choices[0].finish_reason == "length"


def test_sse_framing_is_exact(server):
    """Raw stream: every event is one `data: <json>` line and the stream ends in [DONE]."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 4, "stream": True, "logprobs": 2}
    with httpx.stream("POST", server.root + "/v1/completions", json=body) as r:
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]"
    chunk = orjson.loads(events[0][6:])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["index"] == 0
    assert set(chunk["choices"][0]["logprobs"]) == {
        "text_offset",
        "token_logprobs",
        "tokens",
        "top_logprobs",
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", {"model": "tiny"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
            400,
            "top_logprobs",
        ),
        ("/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES}, 404, "model"),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}, 400, "n"),
        ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
        ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
        ("/v1/completions", {"prompt": ""}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x" * 40_000}, 400, "prompt"),
    ],
)
def test_bad_requests_get_openai_error_json(server, path, body, status, param):
    """Bad requests get a 4xx with {"error": {message, type, param, code}}, never a crash."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    r = httpx.post(server.root + path, content=content)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    if param == "n":
        assert "send n requests" in err["message"]


async def test_concurrent_requests_are_batched(server):
    """Eight concurrent requests are decoded together (fewer decode steps than tokens) and
    each returns what it returns alone with the same seed."""
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)

    async def ask(seed: int):
        r = await client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=30, seed=seed, temperature=1.0
        )
        return r.choices[0].message.content, r.usage.completion_tokens

    alone = [await ask(s) for s in range(8)]
    before = server.metrics()
    together = await asyncio.gather(*(ask(s) for s in range(8)))
    after = server.metrics()
    steps = after["decode_steps"] - before["decode_steps"]
    tokens = after["tokens_generated"] - before["tokens_generated"]
    assert tokens == sum(n for _, n in together) and steps < tokens / 2
    assert together == alone
    await client.close()


def test_disconnect_aborts_the_sequence(server):
    """Closing a stream after a few chunks aborts the request within a step or so: /metrics
    counts it aborted, nothing keeps running, and far fewer than max_tokens were generated."""
    before = server.metrics()
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 25_000,
        "stream": True,
        "ignore_eos": True,
        "seed": 1,
    }
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", server.root + "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert all(line.startswith("data: ") or line == "" for line in got)
    deadline = time.monotonic() + 5
    while (m := server.metrics())["requests_aborted"] == before["requests_aborted"]:
        assert time.monotonic() < deadline, "the closed stream was never aborted"
        time.sleep(0.01)
    assert m["requests_running"] == 0
    generated = m["tokens_generated"] - before["tokens_generated"]
    assert generated < 2_500
    time.sleep(0.1)
    assert server.metrics()["tokens_generated"] == m["tokens_generated"]


async def test_non_streaming_disconnect_aborts_too():
    """A non-streamed request whose client goes away is aborted as well (fake model, ASGI)."""
    engine = AsyncEngine(Engine(FakeModel(eos_bias=-50.0), FakeTokenizer(), max_len=100_000))
    app = create_app(engine, FakeTokenizer(), model_name="fake")
    body = orjson.dumps({"prompt": [3, 4], "max_tokens": 90_000})
    sent: list[dict] = []
    disconnect = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [],
        "query_string": b"",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
    }
    task = asyncio.create_task(app(scope, receive, send))
    while engine.stats.tokens_generated < 50:
        await asyncio.sleep(0.005)
    disconnect.set()
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.05)
    assert engine.stats.aborted == 1 and engine.stats.running == 0
    assert engine.stats.tokens_generated < 90_000 / 2
    assert not sent  # nothing was written to the gone client
    engine.close()


def test_top_logprobs_beyond_the_vocabulary_is_a_400():
    """Asking for more top logprobs than the vocabulary holds is a 400 naming the parameter."""
    engine = AsyncEngine(Engine(FakeModel(vocab_size=12), FakeTokenizer()))
    app = create_app(engine, FakeTokenizer(), model_name="fake")
    transport = httpx.ASGITransport(app=app)

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post("/v1/completions", json={"prompt": [3], "logprobs": 15})

    r = asyncio.run(go())
    engine.close()
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    assert engine.stats.tokens_generated == 0  # refused before reaching the engine


def test_stop_string_cuts_the_text(client):
    """With the same seed, adding a stop string that occurs in the free text returns exactly
    the text before its first occurrence, with finish_reason 'stop'."""
    kw = dict(model="tiny", prompt="Problem: 9+9\n", max_tokens=60, seed=21, temperature=1.0)
    free = client.completions.create(**kw).choices[0].text
    stop = next(c for c in free[3:] if c.isascii() and c.isprintable())
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == free[: free.index(stop)]
    assert cut.model_extra["stop_reason"] == stop  # vLLM's field: the stop string matched
    streamed = list(client.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_token_strings_collapse_unless_returned_as_ids(client):
    """As in vLLM, completions' top_logprobs dicts collapse ids whose token strings are equal
    (single bytes of a multi-byte character all decode to U+FFFD here), and
    return_tokens_as_token_ids keys them 'token_id:<id>' so all K+1 survive."""
    kw = dict(model="tiny", prompt="x", max_tokens=30, seed=2, logprobs=20)
    plain = client.completions.create(**kw).choices[0].logprobs.top_logprobs
    assert min(len(d) for d in plain) < 20  # collapsed: fewer keys than ranks
    as_ids = client.completions.create(**kw, extra_body={"return_tokens_as_token_ids": True})
    dicts = as_ids.choices[0].logprobs.top_logprobs
    assert all(len(d) in (20, 21) for d in dicts)
    assert all(key.startswith("token_id:") for d in dicts for key in d)
