"""A trace counts only what it really received: the stream audit, logprob sanitisation at the
boundary, deadlines that mean progress, a probe a silent model cannot fool, endpoint health,
and messages that name the cause. Pure pieces are tested directly, the rest against the real
scripted server on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.proxy_runner import ProxyServer
from support.read_paths import READ_PATHS, read_trace, use_read_path
from support.scripted_server import CONFIDENT, MODEL, Script, ScriptedServer, scripted_server

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.backends.routing import COOLDOWN_S, EJECT_AFTER, EndpointPool
from deepconf.backends.sse import Decoded, decode_payloads, decode_payloads_reference
from deepconf.backends.stream_audit import VERIFY_POSITIONS, StreamAudit
from deepconf.confidence import LOGPROB_FLOOR, token_confidence
from deepconf.config import ConfidenceConfig, DeepConfConfig, SamplingConfig
from deepconf.controller import DeepConf, give_up
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConnectError,
    RateLimitedError,
    StreamError,
)

__all__ = ["scripted_server"]  # the fixture, imported for pytest

TEXT = "The answer is \\boxed{7}."
REASONING = "Let me add three and four carefully, one step at a time."


def decoded(n: int, k: int = 4, *, text: str = "x", finish: str | None = None, **kw) -> Decoded:
    lp = np.tile(-np.arange(1.0, k + 1), (n, 1))  # (n, k)
    return Decoded(lp, text=text, finish_reason=finish, **kw)


def backend_for(*servers: ScriptedServer, **kw) -> OpenAIHttpBackend:
    kw.setdefault("backoff_base", 0.01)
    return OpenAIHttpBackend(HttpBackendConfig(base_urls=[s.base_url for s in servers], **kw))


async def collect(backend: OpenAIHttpBackend, index: int = 0, k: int = 20) -> list[TokenBatch]:
    req = TraceRequest(index, "What is 3+4?", SamplingConfig(), top_logprobs=k, seed=index)
    return await read_trace(backend, req)


@pytest.fixture(autouse=True, params=READ_PATHS)
def read_path(request: pytest.FixtureRequest) -> str:
    """Every test here reads its traces by stream() and by push() (tests/support/read_paths.py)."""
    return use_read_path(request.param)


def ended(batches: list[TokenBatch]) -> bool:
    return any(b.finish_reason == "stop" for b in batches)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# --- the audit (pure) --------------------------------------------------------------------------


def test_audit_counts_a_stream_that_ends_with_a_finish_reason() -> None:
    audit = StreamAudit("u", 4)
    audit.take(decoded(3))
    audit.take(decoded(2, finish="stop", usage={"completion_tokens": 6}))  # + the end token
    audit.end(done=True, busy=False)
    assert (audit.tokens, audit.finish_reason) == (5, "stop")


@pytest.mark.parametrize(
    ("done", "busy", "words"),
    [
        (True, True, "--interrupt_requests false"),
        (True, False, "ended with [DONE] but no finish reason"),
        (False, False, "closed after 3 tokens without a finish reason or [DONE]"),
    ],
)
def test_audit_refuses_a_stream_without_a_finish_reason(done, busy, words) -> None:
    """[DONE] alone or a close is a cut; with other streams in flight the message names
    llama-cpp-python's interrupt and its fix."""
    audit = StreamAudit("u", 4)
    audit.take(decoded(3))
    with pytest.raises(StreamError, match=words.replace("[", r"\[").replace("]", r"\]")):
        audit.end(done=done, busy=busy)


def test_audit_refuses_text_without_logprobs_and_tokens_without_entries() -> None:
    with pytest.raises(StreamError, match=r"text without logprobs after 2 tokens \('abc'\)"):
        StreamAudit("u", 4).take(decoded(2, unscored="abc"))
    with pytest.raises(StreamError, match="1 token"):
        StreamAudit("u", 4).take(decoded(2, empty_rows=1))


@pytest.mark.parametrize(("reported", "ok"), [(5, True), (6, True), (4, False), (7, False)])
def test_audit_usage_may_exceed_the_scored_tokens_by_the_end_token_only(reported, ok) -> None:
    audit = StreamAudit("u", 4)
    audit.take(decoded(5, finish="stop", usage={"completion_tokens": reported}))
    if ok:
        audit.end(done=True, busy=False)
    else:
        with pytest.raises(StreamError, match=f"reports {reported} completion tokens"):
            audit.end(done=True, busy=False)


def test_audit_verifies_k_on_the_fullest_position_when_no_probe_did() -> None:
    """Unprobed: a cap is the same at every position, so VERIFY_POSITIONS positions that all
    fall short are a CapabilityError naming the fullest count (no retry can fix it), while
    the first position with k entries confirms k."""
    short = decoded(VERIFY_POSITIONS, k=4)
    short.top_logprobs[:, 3] = np.nan  # 3 of the 4 asked at every position
    short.top_logprobs[::2, 2] = np.nan  # and 2 at every other one
    audit = StreamAudit("u", 4, verify_k=True)
    audit.take(Decoded(short.top_logprobs[:-1], text="x"))
    assert not audit.k_confirmed  # one position short of a judgement
    with pytest.raises(CapabilityError) as info:
        audit.take(Decoded(short.top_logprobs[-1:], text="x"))
    assert str(info.value) == (
        f"u returned at most 3 top logprobs per token over {VERIFY_POSITIONS} tokens, fewer"
        " than the 4 asked: on vLLM start the server with --max-logprobs 4 (its default is"
        " 20), or lower --top-logprobs to 3"
    )
    audit = StreamAudit("u", 4, verify_k=True)
    audit.take(decoded(1))
    assert audit.k_confirmed


def test_audit_lets_collapsed_positions_through_when_one_carries_k() -> None:
    """llama.cpp merges equal token strings (SmolLM2 sends 19 of 20 at most positions): a
    stream whose positions mostly fall one short, but where one carries all k, is served k,
    wherever that position comes among the first VERIFY_POSITIONS."""
    for full_at in (0, VERIFY_POSITIONS // 2, VERIFY_POSITIONS - 1):
        collapsed = decoded(VERIFY_POSITIONS, k=20, finish="stop")
        collapsed.top_logprobs[:, 19] = np.nan
        collapsed.top_logprobs[full_at, 19] = -30.0
        audit = StreamAudit("u", 20, verify_k=True)
        audit.take(collapsed)
        audit.end(done=True, busy=False)
        assert audit.k_confirmed and audit.tokens == VERIFY_POSITIONS


def test_a_short_stream_is_judged_at_its_end_when_it_sent_enough_positions() -> None:
    """A trace that ends before VERIFY_POSITIONS is judged on what it sent: fewer than
    VERIFY_MIN_POSITIONS short positions leave k unjudged; that many refuse it at the end."""
    from deepconf.backends.stream_audit import VERIFY_MIN_POSITIONS

    for n, refused in ((VERIFY_MIN_POSITIONS - 1, False), (VERIFY_MIN_POSITIONS, True)):
        short = decoded(n, k=4, finish="stop")
        short.top_logprobs[:, 3] = np.nan
        audit = StreamAudit("u", 4, verify_k=True)
        audit.take(short)
        if refused:
            with pytest.raises(CapabilityError, match=f"at most 3 top logprobs .* over {n} "):
                audit.end(done=True, busy=False)
        else:
            audit.end(done=True, busy=False)
            assert not audit.k_confirmed


# --- sanitisation at the boundary (property) -----------------------------------------------------

ANY_JSON_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([1e308, -1e308, 1e-6, 5.0, -9999.0, 0.0]),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(ANY_JSON_VALUE, min_size=1, max_size=6), min_size=1, max_size=4))
def test_any_value_in_a_logprob_position_gives_finite_confidence_or_a_stream_error(rows) -> None:
    """Whatever a server writes where a logprob belongs (NaN, ±Infinity, 1e400, ±1e308,
    positive numbers, null, strings, booleans), decoding yields confidences that are all
    finite, or a typed StreamError; the fast path and the reference agree on which."""
    content = [
        {"token": "t", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": v} for v in row]}
        for row in rows
    ]
    chunk = {"choices": [{"index": 0, "delta": {"content": "t"}, "logprobs": {"content": content}}]}
    payload = json.dumps(chunk).encode()  # NaN / Infinity literals, as Python servers write
    outcomes = []
    for decode in (decode_payloads, decode_payloads_reference):
        try:
            d = decode([payload], 4)
        except StreamError:
            outcomes.append("error")
            continue
        lp = d.top_logprobs
        present = lp[~np.isnan(lp)]
        assert np.all((present >= LOGPROB_FLOOR) & (present <= 0.0))
        assert np.all(np.isfinite(token_confidence(lp)))
        outcomes.append(lp)
    if isinstance(outcomes[0], str) or isinstance(outcomes[1], str):
        assert isinstance(outcomes[0], str) and isinstance(outcomes[1], str)
    else:
        np.testing.assert_array_equal(outcomes[0], outcomes[1])


def test_nan_names_the_token_counted_across_reads() -> None:
    """`offset` is the tokens already received: the message names the absolute token."""
    row = [{"token": "a", "logprob": math.nan}, {"token": "b", "logprob": -1.0}]
    tok = {"token": "a", "logprob": -0.1, "top_logprobs": row}
    ok = {"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}]}
    chunk = {"choices": [{"index": 0, "logprobs": {"content": [ok, ok, tok]}}]}
    with pytest.raises(StreamError, match="NaN as a logprob at token 13"):
        decode_payloads([json.dumps(chunk).encode()], 2, offset=10)


# --- endpoint health (pure, fake clock) ---------------------------------------------------------


def test_a_failing_endpoint_leaves_the_rotation_and_a_probe_trace_brings_it_back() -> None:
    now = [0.0]
    pool = EndpointPool(["a", "b"], clock=lambda: now[0])
    for _ in range(EJECT_AFTER - 1):
        assert pool.failed("a", "connect error", ejects=True) is None
    assert pool.failed("a", "connect error", ejects=True) == COOLDOWN_S
    assert {pool.acquire() for _ in range(4)} == {"b"}  # out of the rotation
    now[0] = COOLDOWN_S + 0.1
    picks = {pool.acquire() for _ in range(4)}
    assert "a" in picks  # due back: its next trace is the probe
    assert pool.failed("a", "connect error", ejects=True) == 2 * COOLDOWN_S  # failed again
    pool.succeeded("a")
    now[0] += 3 * COOLDOWN_S
    assert pool.failed("a", "connect error", ejects=True) is None  # the streak restarted
    assert pool.summary() == [
        f"a: {EJECT_AFTER + 2} failed request(s) (connect error {EJECT_AFTER + 2});"
        " left the rotation 2 time(s)"
    ]


def test_rate_limits_are_counted_but_do_not_eject() -> None:
    pool = EndpointPool(["a", "b"])
    for _ in range(10):
        assert pool.failed("a", "rate limited (429)", ejects=False) is None
    assert "a" in {pool.acquire() for _ in range(4)}
    assert pool.summary() == ["a: 10 failed request(s) (rate limited (429) 10)"]


def test_with_every_endpoint_out_the_one_due_back_first_is_used() -> None:
    pool = EndpointPool(["a", "b"], clock=lambda: 0.0)
    for url in ("a", "a", "a", "b", "b", "b", "b", "b", "b"):
        pool.failed(url, "connect error", ejects=True)
    assert pool.acquire() == "a"  # b was ejected twice: its cooldown is longer


# --- the HTTP backend against the scripted server -----------------------------------------------


async def test_dead_peer_leaves_the_rotation_with_one_summary_line(scripted_server, caplog):
    """Two base URLs, one dead: after EJECT_AFTER connect errors it is out, traces go to
    the live one, retries are logged once per server and summarised at close."""
    scripted_server.default = Script.from_text(TEXT)
    backend = OpenAIHttpBackend(
        HttpBackendConfig(base_urls=[dead_url(), scripted_server.base_url], backoff_base=0.001)
    )
    with caplog.at_level(logging.DEBUG, logger="deepconf.backends.openai_http"):
        for i in range(12):
            assert ended(await collect(backend, i))
        await backend.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("retrying" in m for m in warnings) == 1
    assert sum("left the rotation after" in m for m in warnings) == 1
    summary = [m for m in warnings if "failed request(s)" in m]
    assert len(summary) == 1 and f"connect error {EJECT_AFTER}" in summary[0]


async def test_a_reset_names_its_reason(scripted_server):
    scripted_server.default = Script.from_text(TEXT, delay=0.001, drop_after=3)
    with pytest.raises(StreamError) as info:
        await collect(backend_for(scripted_server))
    reason = str(info.value).split("broke: ")[-1]
    assert reason.strip(), info.value  # never an empty reason


async def test_a_200_html_page_is_refused_once_not_retried_as_a_stream(scripted_server):
    backend = backend_for(scripted_server)
    await backend.open()
    scripted_server.default = Script.from_text(TEXT, html=True)
    before = len(scripted_server.requests)
    with pytest.raises(StreamError) as info:
        await collect(backend)
    assert str(info.value).startswith(
        f"{scripted_server.base_url} answered 200 with text/html (an error page?)"
    )
    assert len(scripted_server.requests) == before + 1


async def test_keepalive_comments_do_not_reset_the_token_deadline(scripted_server):
    scripted_server.default = Script.from_text(TEXT, stall_after=2, keepalive=0.05)
    backend = backend_for(scripted_server, token_timeout=0.5)
    with pytest.raises(StreamError, match=r"no token .* for 0.5 s after 2 tokens \(--timeout\)"):
        await collect(backend)


async def test_trace_timeout_bounds_a_slow_but_steady_trace(scripted_server):
    backend = backend_for(scripted_server, trace_timeout=0.5)
    await backend.open()
    scripted_server.default = Script.from_text(TEXT * 20, delay=0.05)
    with pytest.raises(StreamError, match=r"wall-clock limit of 0.5 s \(--trace-timeout\)"):
        await collect(backend)


async def test_an_oversized_event_fails_the_trace(scripted_server):
    backend = backend_for(scripted_server, max_event_bytes=64 * 1024)
    await backend.open()
    scripted_server.default = Script.from_text(TEXT, no_newline_bytes=256 * 1024)
    with pytest.raises(StreamError, match="past the limit of 65,536 bytes"):
        await collect(backend)


def silent_probe(_n: int, body: dict) -> Script | None:
    """A model that ends at once on anything but a trace (no seed): P(end) ~ 1."""
    if body.get("seed") is None:
        return Script([], finish_reason="stop")
    return None


async def test_a_model_that_ends_at_once_does_not_fail_the_probe(scripted_server, caplog):
    """The probe tries a prompt that makes a model write; when that yields nothing too, it
    says so and the first trace judges k instead of refusing the server."""
    scripted_server.choose = silent_probe
    scripted_server.default = Script.from_text(TEXT * 3)
    backend = backend_for(scripted_server)
    with caplog.at_level(logging.WARNING):
        batches = await collect(backend)
    assert ended(batches)
    probes = [s for s in scripted_server.streams if s.seed is None]
    assert len(probes) == 2  # the greeting, then the writing prompt
    assert any("the probe saw 0 tokens in 2 tries" in r.getMessage() for r in caplog.records)


async def test_no_probe_still_refuses_a_short_k_on_the_first_trace(scripted_server):
    scripted_server.default = Script.from_text(TEXT * 3, max_logprobs=5)
    backend = backend_for(scripted_server, probe=False)
    with pytest.raises(
        CapabilityError, match="returned at most 5 top logprobs per token over 10 tokens"
    ):
        await collect(backend)
    assert all(s.seed is not None for s in scripted_server.streams)  # no probe request


async def test_a_trace_begun_while_k_is_unconfirmed_is_audited_too(scripted_server):
    """--no-probe: trace 0 has sent its first tokens, none with k entries yet, when trace 1
    begins. k is not confirmed by a stream merely starting, so trace 1 is audited as well
    and refused by itself, not let through on trace 0's unfinished word."""
    scripted_server.default = Script.from_text(TEXT * 3, max_logprobs=5)
    backend = backend_for(scripted_server, probe=False)
    first = TraceRequest(0, "What is 3+4?", SamplingConfig(), top_logprobs=20, seed=0)
    async with contextlib.aclosing(backend.stream(first)) as stream:
        assert (await anext(stream)).n_tokens > 0
        with pytest.raises(CapabilityError, match="returned at most 5 top logprobs per token"):
            await collect(backend, index=1)
    await backend.aclose()


async def test_probe_text_without_logprobs_says_what_it_saw(scripted_server):
    scripted_server.default = Script.from_text(TEXT, logprobs=False)
    with pytest.raises(CapabilityError) as info:
        await backend_for(scripted_server).open()
    where = f"{scripted_server.base_url} ({MODEL}, /chat/completions)"
    assert str(info.value).startswith(f"{where}: the probe got 24 characters of text but no")


# --- the controller ------------------------------------------------------------------------------


def small_config(**kw) -> DeepConfConfig:
    kw.setdefault("budget", 6)
    return DeepConfConfig(
        warmup=2,
        concurrency=2,
        confidence=ConfidenceConfig(window=4),
        sampling=SamplingConfig(seed=0),
        **kw,
    )


async def test_a_capability_error_mid_solve_stops_at_once(scripted_server, tmp_path: Path):
    """--no-probe against a server short of k: the first trace's CapabilityError ends the
    solve (no retry fixes it), rather than `budget` failures later; every trace recorded."""
    scripted_server.default = Script.from_text(REASONING + TEXT, max_logprobs=5)
    engine = DeepConf(
        backend_for(scripted_server, probe=False),
        small_config(budget=40),
        trace_path=tmp_path / "t.jsonl",
    )
    with pytest.raises(CapabilityError, match="a trace failed, so deepconf gave up"):
        await engine.solve("What is 3+4?")
    assert len(scripted_server.streams) <= 3  # one failure plus what was already in flight


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (RateLimitedError("429", 2.0), "lower --concurrency"),
        (ConnectError("refused"), "start it or fix --base-url"),
        (StreamError("cut"), "deepconf doctor"),
    ],
)
def test_give_up_advises_by_cause_and_keeps_the_type(error, advice) -> None:
    err = give_up([error, error])
    assert type(err) is type(error) and advice in str(err)
    assert "2 traces failed in a row" in str(err)
    if isinstance(error, RateLimitedError):
        assert err.retry_after == 2.0


async def test_counted_traces_have_finish_reasons_and_tokens(scripted_server):
    """Every trace cut by [DONE] without a finish reason is failed and replaced; the answer
    comes from traces that finished; usage is recorded beside the counted tokens."""
    cut = Script.from_text(
        REASONING + "The answer is \\boxed{13}.", top=CONFIDENT, finish_reason=None
    )
    scripted_server.by_seed = {1: cut, 3: cut}
    scripted_server.default = Script.from_text(REASONING + TEXT)
    result = await DeepConf(backend_for(scripted_server), small_config()).solve("3+4?")
    assert result.answer == "7"
    failed = [t for t in result.traces if t.status == "failed"]
    assert 1 in {t.seed for t in failed} <= {1, 3}  # seed 3 may never launch (early stop)
    for t in result.traces:
        if t.finished:
            assert t.finish_reason is not None and t.tokens > 0
            assert t.server_tokens == t.tokens


# --- serve: upstream data faults are 502s, never 400s -------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        Script.from_text(TEXT, top=[math.nan, *CONFIDENT[1:]]),
        Script.from_text(TEXT, finish_reason=None),
        Script.from_text(TEXT, null_logprobs_after=1),
    ],
    ids=["nan", "no-finish", "null-logprobs"],
)
def test_serve_answers_upstream_data_faults_with_502_and_the_reason(script) -> None:
    def faulty_traces(_n: int, body: dict) -> Script | None:
        return script if body.get("seed") is not None else Script.from_text(TEXT)

    with ScriptedServer(choose=faulty_traces) as up, ProxyServer(up.base_url) as px:
        r = httpx.post(
            px.base_url + "/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "3+4?"}],
                "seed": 0,
                "deepconf": {"budget": 3, "warmup": 2},
            },
            timeout=30,
        )
    assert r.status_code == 502, r.text
    assert "gave up" in r.json()["error"]["message"]


def test_give_up_of_unknown_errors_is_a_backend_error() -> None:
    assert isinstance(give_up([BackendError("x")]), BackendError)


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of backends/stream_audit.py that every test above let through.


def test_audit_leaves_k_alone_unless_asked_to_verify_it() -> None:
    """By default (a probe already confirmed k) the audit does not judge k: positions with
    fewer entries than asked, however many, pass; only verify_k=True refuses them."""
    short = decoded(2 * VERIFY_POSITIONS, k=4, finish="stop")
    short.top_logprobs[:, 3] = np.nan  # 3 of the 4 asked at every position
    audit = StreamAudit("u", 4)
    audit.take(short)
    audit.end(done=True, busy=False)
    assert (audit.tokens, audit.k_confirmed) == (2 * VERIFY_POSITIONS, False)


def test_audit_counts_a_finished_stream_that_reports_no_usage() -> None:
    """Usage is optional (a server may not send it): a stream with a finish reason and no
    usage at all counts."""
    audit = StreamAudit("u", 4)
    audit.take(decoded(3, finish="length"))
    audit.end(done=False, busy=True)
    assert (audit.tokens, audit.finish_reason, audit.usage) == (3, "length", {})


def test_audit_messages_name_the_server_the_cause_and_what_to_do() -> None:
    """Each refusal says which server, what it did (with the token count) and what to do
    next, word for word: these messages are what a user acts on."""
    url = "http://gpu-7:8000/v1"
    unscored = "The answer is probably seven, but let me check again."  # 53 characters
    cases = [
        (
            lambda a: a.take(decoded(2, unscored=unscored)),
            f"{url} sent text without logprobs after 5 tokens ({unscored[:40]!r}): DeepConf"
            " cannot score it, so the trace is not counted. Check that the server returns"
            " logprobs for every token (a reasoning parser may strip them; run deepconf doctor)",
        ),
        (
            lambda a: a.take(decoded(2, empty_rows=1)),
            f"{url} sent 1 token(s) with no logprob at all (near token 5): DeepConf cannot"
            " score them, so the trace is not counted",
        ),
        (
            lambda a: a.end(done=True, busy=False),
            f"the stream from {url} ended with [DONE] but no finish reason after 3 tokens, so"
            " the trace is not counted: (a server or proxy cut the trace short)",
        ),
        (
            lambda a: a.end(done=True, busy=True),
            f"the stream from {url} ended with [DONE] but no finish reason after 3 tokens, so"
            " the trace is not counted: llama-cpp-python's server does this to a request"
            " whenever another one is waiting (its default interrupt_requests=True): start it"
            " with --interrupt_requests false, or run deepconf with --concurrency 1",
        ),
        (
            lambda a: a.end(done=False, busy=False),
            f"the stream from {url} closed after 3 tokens without a finish reason or [DONE]:"
            " the server or a proxy cut the trace short",
        ),
    ]
    for act, message in cases:
        audit = StreamAudit(url, 4)
        audit.take(decoded(3))
        with pytest.raises(StreamError) as info:
            act(audit)
        assert str(info.value) == message
    audit = StreamAudit(url, 4)
    audit.take(decoded(3, finish="stop", usage={"completion_tokens": 9}))
    with pytest.raises(StreamError) as info:
        audit.end(done=True, busy=False)
    assert str(info.value) == (
        f"{url} reports 9 completion tokens but sent logprobs for 3: some tokens arrived"
        " without logprobs or were lost, so the trace is not counted (run deepconf doctor to"
        " see what the server sends)"
    )
