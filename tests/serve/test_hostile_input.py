"""`deepconf serve` against careless and hostile bodies, on loopback in front of the scripted
upstream: an answer pattern that backtracks, nesting built to exhaust recursion, lone
surrogates, numbers no upstream takes, and fuzzed bodies. Each is the client's fault, so
each is a 4xx in OpenAI's error shape, and the server keeps answering everyone else."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.proxy_runner import ProxyServer
from support.scripted_server import CONFIDENT, MODEL, Script, ScriptedServer

ASK = [{"role": "user", "content": "What is 3+4?"}]
ANSWER = Script.from_text("The answer is \\boxed{7}.", delay=0.001)
# No box and no answer phrase: extraction falls through to the user's patterns.
UNBOXED = Script.from_text("a" * 60, delay=0.001)
# Exponential for the `regex` engine too (a repeat of an ambiguous group, then a backreference).
BACKTRACKING = r"^((a|aa)+)\1!"
# The pattern that froze `deepconf serve` for good under Python's `re` (from the issue).
ISSUE_PATTERN = r"^(?:[\w ,=]|[\w ,=][\w ,=])*!$"


def _asks_more_logprobs_than_served(body: object) -> bool:
    extra = body.get("deepconf") if isinstance(body, dict) else None
    asked = extra.get("top_logprobs") if isinstance(extra, dict) else None
    return type(asked) is int and asked > len(CONFIDENT)


def _openai_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyServer]:
    """Traces (requests with a seed) say 'aaaa...' with no box; the probe gets a quick answer."""
    choose = lambda n, body: UNBOXED if "seed" in body else None  # noqa: E731
    with ScriptedServer(default=ANSWER, choose=choose) as up, ProxyServer(up.base_url) as px:
        yield px


@pytest.fixture(scope="module")
def http(proxy: ProxyServer) -> Iterator[httpx.Client]:
    """One client for many requests (a new httpx client per request loads TLS roots)."""
    with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
        yield client


def test_a_backtracking_answer_pattern_is_a_400_and_the_server_keeps_answering(
    proxy: ProxyServer,
) -> None:
    """The pattern meets its time limit on the first trace without a box: the request fails
    with a 400 quoting the pattern (not a frozen loop, not a 500), and /health and an ordinary
    request are answered right after."""
    c = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    hostile = {"budget": 2, "answer": {"patterns": [BACKTRACKING]}}
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model=MODEL, messages=ASK, seed=1, max_tokens=40, extra_body={"deepconf": hostile}
        )
    assert "backtracks" in info.value.message
    assert httpx.get(proxy.root + "/health").json()["status"] == "ok"
    r = c.chat.completions.create(model=MODEL, messages=ASK, extra_body={"deepconf": {"budget": 2}})
    assert r.model_extra["deepconf"]["answer"] == "7"  # the probe-like default script: no seed


def test_the_issue_pattern_no_longer_freezes_the_server(proxy: ProxyServer) -> None:
    """The body from the issue (budget 2, max_tokens 40, its pattern) is answered: the `regex`
    engine matches that pattern in linear time; no answer is found in 'aaaa...'."""
    body = {
        "model": MODEL,
        "messages": ASK,
        "seed": 3,
        "max_tokens": 40,
        "deepconf": {"budget": 2, "answer": {"patterns": [ISSUE_PATTERN]}},
    }
    r = httpx.post(proxy.base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 200
    assert r.json()["deepconf"]["answer"] is None
    assert httpx.get(proxy.root + "/health").status_code == 200


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deep_nesting_is_a_400(proxy: ProxyServer, depth: int) -> None:
    """1,000-deep (parsed, then refused by the depth check, naming where) and 5,000-deep
    (refused by the parser) nesting: 400, no RecursionError."""
    nested = "[" * depth + "]" * depth
    raw = '{"model": "m", "messages": [{"role": "user", "content": ' + nested + "}]}"
    r = httpx.post(proxy.base_url + "/chat/completions", content=raw.encode())
    assert r.status_code == 400
    error = _openai_error(r)
    assert "nests deeper" in error["message"] or "not valid JSON" in error["message"]
    if depth == 1_000:
        assert error["param"].startswith("messages.0.content")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    ],
    ids=["escaped-high-surrogate", "escaped-low-surrogate-in-stop", "surrogate-as-utf8-bytes"],
)
def test_lone_surrogates_are_a_400(proxy: ProxyServer, raw: bytes) -> None:
    """Text UTF-8 cannot carry (so no upstream could be sent it) is refused at the door."""
    r = httpx.post(proxy.base_url + "/chat/completions", content=raw)
    assert r.status_code == 400
    assert "not valid JSON" in _openai_error(r)["message"]


def test_a_body_that_trickles_in_gets_a_408() -> None:
    """A client that sends its head and then a body slower than the body deadline (30 s by
    default) gets a 408 instead of holding its connection and task for ever."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url, body_timeout=0.2) as px:
        port = int(px.root.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            sock.sendall(head + b"\r\n" + b'{"model": ')  # ... and the rest never comes
            # The head and the body of the answer may arrive in separate reads: read until
            # the server closes (it does, after a 408).
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("max_tokens", 10**30, "max_tokens"),
        ("max_tokens", 2**31, "max_tokens"),
        ("seed", -1, "seed"),
        ("seed", 2**64, "seed"),
        ("temperature", 1e308, "temperature"),
        ("top_k", 2**40, "top_k"),
    ],
)
def test_numbers_no_upstream_takes_are_a_400_naming_the_field(
    proxy: ProxyServer, field: str, value: object, param: str
) -> None:
    """Out-of-range numbers are the client's error, named; they never reach the upstream
    as a failure that would come back as a 502."""
    body = {"model": MODEL, "messages": ASK, field: value}
    r = httpx.post(proxy.base_url + "/chat/completions", content=json.dumps(body))
    assert r.status_code == 400
    assert _openai_error(r)["param"] == param


# --- fuzzing -------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def _mostly(valid: st.SearchStrategy, weight: int = 3) -> st.SearchStrategy:
    """`valid` most of the time, any JSON value otherwise: bodies get past the first check
    often enough to reach the later ones (and the upstream)."""
    return st.one_of(*([valid] * weight), _json)


_deepconf = st.fixed_dictionaries(
    {},
    optional={
        "mode": _mostly(st.sampled_from(["online", "offline"])),
        "variant": _mostly(st.sampled_from(["low", "high"])),
        "token_budget": _mostly(st.integers(min_value=-1, max_value=10**12)),
        "tau": _mostly(st.floats(min_value=-1, max_value=2)),
        "concurrency": _mostly(st.integers(min_value=-1, max_value=10**9)),
        "offline_method": _mostly(st.sampled_from(["majority", "tail@10", "lowest@90", "x@1"])),
        "window": _mostly(st.integers(min_value=-1, max_value=10**12)),
        "top_logprobs": _mostly(st.integers(min_value=-1, max_value=200)),
        "answer": _mostly(st.fixed_dictionaries({"patterns": st.lists(st.text(max_size=6))})),
        "nope": _json,
    },
)
_sampling = {
    "max_tokens": _mostly(st.integers(min_value=-2, max_value=2**40)),
    "seed": _mostly(st.integers(min_value=-(2**70), max_value=2**70)),
    "stop": _mostly(st.one_of(st.text(max_size=4), st.lists(st.text(min_size=1, max_size=4)))),
    "stream": _mostly(st.booleans()),
    "temperature": _mostly(st.floats(min_value=-1, max_value=10)),
    "top_p": _mostly(st.floats(min_value=-1, max_value=2)),
    "n": _mostly(st.integers(min_value=0, max_value=3)),
    "deepconf": _mostly(_deepconf),
}
_text = st.text(max_size=20)
_message = st.fixed_dictionaries({"role": st.just("user"), "content": _text})
_chat = st.fixed_dictionaries(
    {
        "model": _mostly(st.just(MODEL), 8),
        "messages": _mostly(st.lists(_message, min_size=1, max_size=2), 8),
    },
    optional=_sampling,
)
_completion = st.fixed_dictionaries(
    {"model": _mostly(st.just(MODEL), 8), "prompt": _mostly(_text, 8)}, optional=_sampling
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# found by a stress run's seed: valid, and more logprobs than the upstream has
@example(case=("/completions", {"model": MODEL, "prompt": "", "deepconf": {"top_logprobs": 32}}))
@given(
    case=st.one_of(
        st.tuples(st.just("/chat/completions"), _chat),
        st.tuples(st.just("/completions"), _completion),
        st.tuples(st.sampled_from(["/chat/completions", "/completions"]), _json),
    )
)
def test_fuzzed_bodies_never_get_a_5xx(http: httpx.Client, case: tuple[str, object]) -> None:
    """Mostly-valid bodies with any field replaced by any JSON value, and any JSON value at
    all: a 2xx, or a 4xx in OpenAI's error shape. A 5xx would mean our fault, with one
    exception by design: a valid request for more top logprobs than the upstream sends (the
    scripted one sends 31) is its 502 `upstream_capability`, as deepconf never counts
    confidences from fewer entries than asked."""
    path, body = case
    if isinstance(body, dict):  # keep accepted bodies quick
        quick = {"budget": 1, "warmup": 1}
        extra = body.get("deepconf")
        body["deepconf"] = {**extra, **quick} if isinstance(extra, dict) else quick
    r = http.post(path, content=json.dumps(body))
    if r.status_code == 502 and _asks_more_logprobs_than_served(body):
        assert _openai_error(r)["code"] == "upstream_capability"
        return
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        _openai_error(r)
