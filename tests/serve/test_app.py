"""`deepconf serve` pieces: request -> config mapping, the chosen trace, usage, and the
HTTP-level behaviour (size limit, error shapes, upstream failures, logs, progress pacing)
against the real app on loopback in front of the scripted upstream server."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import socket
import time

import httpx
import numpy as np
import openai
import pytest
from support.proxy_runner import TEST_DEFAULTS, ProxyServer
from support.scripted_server import CONFIDENT, MODEL, UNCONFIDENT, Script, ScriptedServer

from deepconf.confidence import TraceMetrics
from deepconf.config import DeepConfConfig
from deepconf.result import SolveResult, TokenTotals
from deepconf.serve import wire
from deepconf.trace import TraceRecord, TraceStatus
from deepconf.voting import VoteRow

ASK = [{"role": "user", "content": "What is 3+4?"}]
ANSWER = Script.from_text("The answer is \\boxed{7}.", delay=0.001)


def chat(**body: object) -> wire.ChatCompletionRequest:
    return wire.ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, **body})


# --- request -> config -------------------------------------------------------------------------


def test_request_fields_override_server_defaults() -> None:
    """Precedence: the request's own fields and deepconf object, then the server defaults,
    then DeepConfConfig's; window/top_logprobs land in the confidence sub-config."""
    defaults = DeepConfConfig(budget=32, warmup=8, tau=0.9, sampling={"temperature": 0.7})
    req = chat(
        temperature=0.2,
        max_completion_tokens=99,
        stop="END",
        seed=3,
        deepconf={"variant": "high", "window": 16, "top_logprobs": 5},
    )
    config = req.to_config(defaults)
    assert (config.variant, config.budget, config.warmup, config.tau) == ("high", 32, 8, 0.9)
    assert (config.confidence.window, config.confidence.top_logprobs) == (16, 5)
    s = config.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.2, 99, ["END"], 3)
    assert s.top_p == defaults.sampling.top_p  # unset in the request: the server's


def test_sampling_fields_reach_the_config_top_k_included() -> None:
    """top_k is not OpenAI's but vLLM's and SGLang's: a request that sets it gets it."""
    sampling = (
        chat(top_k=5, top_p=0.9, temperature=0.3, seed=4, stop="x")
        .to_config(DeepConfConfig())
        .sampling
    )
    assert (sampling.top_k, sampling.top_p, sampling.temperature) == (5, 0.9, 0.3)
    assert (sampling.seed, sampling.stop) == (4, ["x"])


def test_small_budget_shrinks_the_default_warmup_but_not_an_explicit_one() -> None:
    """A request budget below the server's warm-up count lowers the warm-up to fit; an
    explicit warm-up above the budget is a SettingsError naming deepconf."""
    defaults = DeepConfConfig(budget=64, warmup=16)
    assert chat(deepconf={"budget": 3}).to_config(defaults).warmup == 3
    with pytest.raises(wire.SettingsError) as info:
        chat(deepconf={"budget": 3, "warmup": 5}).to_config(defaults)
    assert info.value.param == "deepconf"
    with pytest.raises(wire.SettingsError) as info:
        chat(deepconf={"window": 0}).to_config(defaults)
    assert info.value.param == "deepconf.window"


def test_unknown_deepconf_key_is_named_with_the_allowed_ones() -> None:
    """A typo in the deepconf object is refused, and the message lists the valid keys."""
    with pytest.raises(ValueError) as info:
        chat(deepconf={"budgett": 4})
    message, param = wire.request_error(info.value)
    assert param == "deepconf.budgett"
    assert "'deepconf.budgett'" in message and "budget" in message and "variant" in message


def test_unknown_openai_fields_are_ignored_but_unsupported_ones_refused() -> None:
    """Fields a client may send (user, metadata, logit_bias) pass; n>1 and tools do not."""
    chat(user="u", metadata={"a": "b"}, logit_bias={"1": 2}, presence_penalty=0.1)
    for bad in ({"n": 2}, {"tools": [{"type": "function"}]}):
        with pytest.raises(ValueError):
            chat(**bad)
    with pytest.raises(ValueError):
        wire.CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]})
    assert wire.CompletionRequest.model_validate({"model": "m", "prompt": ["a"]}).prompt == "a"


# --- the chosen trace and usage ----------------------------------------------------------------


def record(index: int, answer: str | None, lowest: float, status: str = "completed", tokens=10):
    metrics = TraceMetrics(mean=lowest + 1, tail=lowest + 2, bottom=lowest, lowest=lowest)
    return TraceRecord(
        index=index,
        phase="warmup",
        status=TraceStatus(status),
        tokens=tokens,
        token_confs=np.zeros(tokens),
        text=f"trace {index}",
        answer=answer,
        metrics=metrics,
        finish_reason="stop",
    )


def result_of(traces: list[TraceRecord], answer: str | None) -> SolveResult:
    return SolveResult(
        answer=answer,
        votes=[VoteRow(answer, 1, 1.0)] if answer else [],
        beta=1.0,
        threshold=None,
        tokens=TokenTotals.of(traces),
        wall_time=0.1,
        traces=traces,
        stop_reason="budget",
        fallback=None,
        methods={},
        mode="online",
        variant="low",
    )


def test_best_trace_is_the_most_confident_equivalent_winner() -> None:
    """The chosen trace gives the winning answer up to equivalence (0.5 = 1/2), is the most
    confident such trace, and never a pruned one or one with another answer."""
    traces = [
        record(0, "1/2", 5.0),
        record(1, "3", 20.0),  # more confident, but another answer
        record(2, "0.5", 9.0),  # the same answer, written differently
        record(3, "1/2", 30.0, status="pruned"),  # pruned traces never represent the vote
    ]
    best = wire.best_trace(result_of(traces, "1/2"), "lowest")
    assert best is not None and best.index == 2
    # A slow reference: brute force over every trace with the definition written out.
    eligible = [t for t in traces if t.finished and t.answer in ("1/2", "0.5")]
    assert best is max(eligible, key=lambda t: t.metrics.lowest)


def test_best_trace_fallbacks() -> None:
    """No winner: the most confident finished trace; nothing finished: the longest trace;
    no traces: None."""
    traces = [record(0, None, 4.0), record(1, None, 6.0), record(2, None, 9.0, "pruned")]
    assert wire.best_trace(result_of(traces, None), "lowest").index == 1
    cut = [record(0, None, 4.0, "cancelled", 3), record(1, None, 1.0, "pruned", 8)]
    assert wire.best_trace(result_of(cut, None), "lowest").index == 1
    assert wire.best_trace(result_of([], None), "lowest") is None


def test_a_trace_without_a_finite_confidence_is_chosen_last() -> None:
    """A NaN or infinite confidence, or none at all, ranks below any finite one, however
    low: a trace the metric cannot judge never represents the vote over one it can."""
    judged = record(0, "7", -50.0)
    for unjudged in (record(1, "7", math.nan), record(1, "7", math.inf)):
        assert wire.best_trace(result_of([unjudged, judged], "7"), "lowest") is judged
    bare = dataclasses.replace(record(1, "7", 0.0), metrics=None)
    assert wire.best_trace(result_of([bare, judged], "7"), "lowest") is judged


def test_usage_counts_every_trace() -> None:
    """completion_tokens includes pruned and cancelled tokens; prompt tokens are charged
    once per launched trace, and 0 when the upstream never said."""
    traces = [record(0, "7", 5.0, tokens=10), record(1, None, 1.0, "pruned", 4)]
    traces.append(record(2, None, 1.0, "cancelled", 2))
    result = result_of(traces, "7")
    assert wire.usage(result, 11) == {
        "prompt_tokens": 33,
        "completion_tokens": 16,
        "total_tokens": 49,
    }
    assert wire.usage(result, None)["prompt_tokens"] == 0


def test_ranking_metric_follows_the_vote() -> None:
    """Online weighs by the lowest group; offline by its method's metric."""
    assert wire.ranking_metric(DeepConfConfig()) == "lowest"
    offline = DeepConfConfig(mode="offline", offline_method="tail@10")
    assert wire.ranking_metric(offline) == "tail"
    majority = DeepConfConfig(mode="offline", offline_method="majority")
    assert wire.ranking_metric(majority) == "mean"


# --- HTTP behaviour ----------------------------------------------------------------------------


def test_http_errors_have_the_openai_shape() -> None:
    """Oversized bodies (declared or streamed) get 413, bad JSON 400, unknown routes 404,
    all as {"error": {message, type, param, code}}; /health needs no key."""
    with (
        ScriptedServer(default=ANSWER) as up,
        ProxyServer(up.base_url, max_body_bytes=2000) as px,
        httpx.Client(base_url=px.root) as http,
    ):
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 3000}]}
        r = http.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit applies while reading
            yield b'{"model": "m", "messages": ['
            yield b'{"role": "user", "content": "' + b"y" * 3000 + b'"}]}'

        r = http.post("/v1/chat/completions", content=chunks())
        assert r.status_code == 413
        r = http.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json=[1, 2])
        assert r.status_code == 400
        r = http.post("/v1/chat/completions", json={"messages": ASK})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = http.get("/v1/nope")
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get("/health").json()["status"] == "ok"
    assert up.streams == []


def test_budget_over_the_server_limit_is_refused() -> None:
    """A request may not ask for more traces than --max-budget: 400 naming deepconf.budget,
    and nothing reaches the upstream."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url, max_budget=8) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(
                model=MODEL, messages=ASK, extra_body={"deepconf": {"budget": 9}}
            )
        assert info.value.param == "deepconf.budget" and "--max-budget" in info.value.message
        assert up.streams == []


def test_health_is_open_and_v1_is_guarded() -> None:
    """With a key set, /health still answers without one (for load balancers)."""
    with ScriptedServer() as up, ProxyServer(up.base_url, api_key="k1") as px:
        assert httpx.get(px.root + "/health").status_code == 200
        r = httpx.get(px.base_url + "/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(px.base_url + "/models", headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_upstream_is_a_502_that_says_so() -> None:
    """Nothing listens upstream: the client gets a 502 naming the upstream, not a hang."""
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with ProxyServer(dead) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model=MODEL, messages=ASK)
        assert info.value.status_code == 502
        assert "127.0.0.1" in info.value.message
        with pytest.raises(openai.InternalServerError):
            c.models.list()


def test_a_failed_upstream_open_frees_its_solve_slot() -> None:
    """With one solve slot, requests whose upstream cannot be opened each get their 502, never
    a 429 for a slot the failed open kept, and /health counts no solve running."""
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with ProxyServer(dead, max_concurrent_solves=1) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as info:
                c.chat.completions.create(model=MODEL, messages=ASK)
            assert info.value.status_code == 502
        assert httpx.get(px.root + "/health").json()["active_solves"] == 0


def test_an_upstream_429_reaches_the_client_as_a_429_with_its_retry_after() -> None:
    """The upstream's rate limit is the client's: a 429 carrying the upstream's Retry-After
    (the client's SDK then backs off as it should), and the slot is free for the next
    request, which works once the upstream does."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        for _ in range(TEST_DEFAULTS.budget + 1):  # the probe and every trace
            up.fail_next(429, retry_after=7, message="slow down")
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model=MODEL, messages=ASK)
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "7"
        assert "upstream rate limit" in info.value.message and "slow down" in info.value.message
        assert httpx.get(px.root + "/health").json()["active_solves"] == 0
        up.clear_failures()
        r = c.chat.completions.create(model=MODEL, messages=ASK)
        assert r.model_extra["deepconf"]["answer"] == "7"


def test_upstream_404_is_passed_on_and_other_rejections_are_400s() -> None:
    """An upstream 404 (a model it does not serve) comes back as a 404 quoting the upstream;
    another 4xx as a 400 quoting it. Neither leaves a backend behind: the next request opens
    a fresh one and works."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        up.fail_next(404, message="model 'nope' does not exist")
        with pytest.raises(openai.NotFoundError) as missing:
            c.chat.completions.create(model="nope", messages=ASK)
        assert "does not exist" in missing.value.message
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        up.fail_next(422, message="prompt too long for this model")
        with pytest.raises(openai.BadRequestError) as refused:
            c.chat.completions.create(model="other", messages=ASK)
        assert "too long" in refused.value.message and refused.value.code == "upstream_rejected"
        assert httpx.get(px.root + "/health").json()["backends"] == 0
        r = c.chat.completions.create(model=MODEL, messages=ASK)
        assert r.model_extra["deepconf"]["answer"] == "7"


def test_a_solve_that_fails_mid_stream_ends_with_an_error_event() -> None:
    """Every trace breaking upstream: the stream that already started ends with an
    OpenAI-style error object, which the openai client raises."""
    broken = Script.from_text("one two three four \\boxed{7}", error_after=2, delay=0.001)
    choose = lambda n, body: broken if "seed" in body else None  # noqa: E731
    with ScriptedServer(default=ANSWER, choose=choose) as up, ProxyServer(up.base_url) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        stream = c.chat.completions.create(
            model=MODEL, messages=ASK, seed=0, stream=True, extra_body={"deepconf": {"budget": 2}}
        )
        with pytest.raises(openai.APIError) as info:
            list(stream)
        assert "failed" in info.value.message
        record = px.wait_log(lambda d: d["outcome"] == "error")
    assert record["status"] == 200  # the headers had gone out already
    assert record["error"] == info.value.message and record["stream"] is True


def test_pruned_traces_count_in_usage_and_the_log_line() -> None:
    """Online run with pruning: the pruned traces appear in the summary, their tokens in
    usage, and the request's one JSON log line has id, traces, pruned, tokens, time."""
    long_unsure = Script.from_text(" ".join(["hmm"] * 30) + " \\boxed{9}", top=UNCONFIDENT)
    by_seed = {
        0: Script.from_text("so \\boxed{7}", top=CONFIDENT),
        1: Script.from_text("so \\boxed{8}", top=CONFIDENT),  # split vote: no early consensus
        2: long_unsure,
        3: long_unsure,
    }
    with ScriptedServer(default=ANSWER, by_seed=by_seed) as up, ProxyServer(up.base_url) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        r = c.chat.completions.create(
            model=MODEL,
            messages=ASK,
            seed=0,
            extra_body={"deepconf": {"budget": 4, "warmup": 2, "variant": "high"}},
        )
        log = px.wait_log(lambda d: d.get("traces") == 4)
    dc = r.model_extra["deepconf"]
    statuses = [t["status"] for t in dc["traces"]]
    assert statuses == ["completed", "completed", "pruned", "pruned"]
    assert dc["policy"]["name"] == "deepconf-high"  # the request's variant decided
    assert dc["policy"]["filter"] == "prune traces below the warm-up's top-90% cut"
    assert dc["offline_method"] is None
    # Counted, and never more than the 31 the server sends: cut short when the prune lands
    # before the stream's end; a loaded client may read all 31 in one read first (whose
    # tokens the server did generate).
    assert all(0 < t["tokens"] <= 31 for t in dc["traces"][2:])
    assert r.usage.completion_tokens == sum(t["tokens"] for t in dc["traces"])
    assert {k: log[k] for k in ("status", "traces", "pruned")} == {
        "status": 200,
        "traces": 4,
        "pruned": 2,
    }
    assert log["tokens"] == r.usage.completion_tokens and log["id"] == r.id and log["time"] > 0


def test_progress_chunks_are_paced() -> None:
    """Progress chunks go out at most once per progress interval, however fast the upstream
    tokens come: over a run of T seconds there are at most T / interval + 1 of them."""
    fast = Script.from_text(" ".join(["go"] * 60) + " \\boxed{7}", delay=0.004)
    choose = lambda n, body: fast if "seed" in body else None  # noqa: E731
    interval = 0.1
    with (
        ScriptedServer(default=ANSWER, choose=choose) as up,
        ProxyServer(up.base_url, progress_interval=interval, defaults=TEST_DEFAULTS) as px,
    ):
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        c.models.list()  # warm the connection
        started = time.monotonic()
        stream = c.chat.completions.create(
            model=MODEL, messages=ASK, seed=0, stream=True, extra_body={"deepconf": {"budget": 2}}
        )
        events = [
            ch.model_extra["deepconf"]["event"]
            for ch in stream
            if (ch.model_extra or {}).get("deepconf")
        ]
        elapsed = time.monotonic() - started
    progress = events.count("progress")
    assert progress >= 1 and events[-1] == "result"
    assert progress <= elapsed / interval + 1


async def test_concurrent_solves_share_the_upstream_but_not_their_results() -> None:
    """Solves running at once over the one shared backend each get their own traces,
    answer and usage (the AsyncOpenAI client, three requests in flight together)."""
    by_seed = {
        seed: Script.from_text(f"so \\boxed{{{seed // 10}}}", delay=0.01)
        for base in (10, 20, 30)
        for seed in (base, base + 1)
    }
    with ScriptedServer(default=ANSWER, by_seed=by_seed) as up, ProxyServer(up.base_url) as px:
        c = openai.AsyncOpenAI(base_url=px.base_url, api_key="x", max_retries=0)

        async def ask(seed: int) -> openai.types.chat.ChatCompletion:
            return await c.chat.completions.create(
                model=MODEL, messages=ASK, seed=seed, extra_body={"deepconf": {"budget": 2}}
            )

        results = await asyncio.gather(ask(10), ask(20), ask(30))
        await c.close()
        overlap = max(json.loads(line)["active"] for line in px.logs.lines)
    assert overlap >= 2  # they really ran at the same time
    assert [r.model_extra["deepconf"]["answer"] for r in results] == ["1", "2", "3"]
    assert len({r.id for r in results}) == 3
    for r in results:
        traces = r.model_extra["deepconf"]["traces"]
        assert r.usage.completion_tokens == sum(t["tokens"] for t in traces)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--upstream", "ftp://x"], "must start with http:// or https://"),
        (["--upstream", "http://127.0.0.1:9/v1", "--budget", "0"], "budget"),
        (["--upstream", "http://127.0.0.1:9/v1", "--max-concurrent-solves", "0"], "at least 1"),
    ],
)
def test_serve_rejects_bad_flags_before_listening(args: list[str], words: str) -> None:
    """Bad flags end `deepconf serve` at once with exit code 1 and a one-line reason."""
    from typer.testing import CliRunner

    from deepconf.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 1
    assert words in result.output


def test_summary_is_strict_json_even_with_non_finite_numbers() -> None:
    """A threshold or confidence that is NaN or infinite (e.g. a trace with no scored
    group) becomes null, so the body is valid JSON (Starlette refuses NaN outright)."""
    traces = [record(0, "7", float("nan")), record(1, "7", float("-inf"))]
    result = result_of(traces, "7")
    result.threshold = float("inf")
    body = wire.summary(result, wire.best_trace(result, "lowest"), None)
    parsed = json.loads(json.dumps(body, allow_nan=False))
    assert parsed["threshold"] is None
    assert [t["lowest"] for t in parsed["traces"]] == [None, None]


def streamed(px: ProxyServer, path: str, body: dict) -> tuple[httpx.Headers, bytes, list[dict]]:
    """(headers, raw body, the JSON events before [DONE]) of one streamed request."""
    with httpx.stream("POST", px.base_url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        raw = r.read()
    payloads = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert payloads[-1] == b"[DONE]"
    return r.headers, raw, [json.loads(p) for p in payloads[:-1]]


def test_a_streamed_answer_opens_as_openai_streams_do() -> None:
    """An event stream that proxies do not cache, named by the request id it carries in every
    chunk; the first chat chunk gives the assistant role with empty content (as OpenAI's
    does: some clients read the role from it), a completions stream's first text is empty;
    text goes out as UTF-8, not escaped."""
    answer = Script.from_text("So x → ∞ and the answer is \\boxed{7}.", delay=0.001)
    budget = {"deepconf": {"budget": 2, "warmup": 2}}
    with ScriptedServer(default=answer) as up, ProxyServer(up.base_url) as px:
        chat_body = {"model": MODEL, "messages": ASK, "stream": True, **budget}
        headers, raw, events = streamed(px, "/chat/completions", chat_body)
        prompt_body = {"model": MODEL, "prompt": "What is 3+4?", "stream": True, **budget}
        _, _, text_events = streamed(px, "/completions", prompt_body)
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert {e["id"] for e in events} == {headers["x-request-id"]}
    assert events[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    assert "→ ∞".encode() in raw
    assert text_events[0]["choices"][0]["text"] == ""
    assert text_events[0]["object"] == "text_completion"


def test_the_summary_names_every_field_and_sends_null_for_non_finite_values() -> None:
    """The response's `deepconf` object, field by field: a vote weight, beta, threshold or a
    trace's lowest confidence that is NaN or infinite goes out as null (JSON has neither)."""
    traces = [record(0, "7", 12.0), record(1, "8", math.nan, status="pruned", tokens=4)]
    traces.append(TraceRecord(2, "online", TraceStatus.FAILED, 3))  # no metrics
    result = dataclasses.replace(
        result_of(traces, "7"),
        votes=[VoteRow("7", 1, 2.5), VoteRow("8", 1, math.inf)],
        beta=0.6,
        threshold=math.nan,
        wall_time=0.123456,
    )
    assert wire.summary(result, traces[0], 5) == {
        "answer": "7",
        "majority": {"agrees": False, "answer": None, "votes": []},
        "votes": [
            {"answer": "7", "count": 1, "weight": 2.5},
            {"answer": "8", "count": 1, "weight": None},
        ],
        "beta": 0.6,
        "threshold": None,
        "stop_reason": "budget",
        "fallback": None,
        "mode": "online",
        "variant": "low",
        "policy": None,
        "offline_method": None,
        "unjudged_answers": 0,
        "tokens": {"warmup": 14, "online": 3, "offline": 0, "total": 17},
        "prompt_tokens_per_trace": 5,
        "wall_time": 0.1235,
        "chosen_trace": 0,
        "traces": [
            {"index": 0, "phase": "warmup", "status": "completed", "tokens": 10,
             "answer": "7", "lowest": 12.0},
            {"index": 1, "phase": "warmup", "status": "pruned", "tokens": 4,
             "answer": "8", "lowest": None},
            {"index": 2, "phase": "online", "status": "failed", "tokens": 3,
             "answer": None, "lowest": None},
        ],
    }  # fmt: skip
    assert wire.summary(result, None, None)["chosen_trace"] is None
    assert wire.summary(dataclasses.replace(result, threshold=12.5), None, 5)["threshold"] == 12.5


def test_a_plain_solve_that_fails_answers_with_the_error_and_logs_it() -> None:
    """Every trace breaking upstream, not streamed: the client gets the mapped error (502,
    upstream_unavailable, the cause quoted) and the request's log line says so."""
    broken = Script.from_text("one two three four \\boxed{7}", error_after=2, delay=0.001)
    choose = lambda n, body: broken if "seed" in body else None  # noqa: E731
    with ScriptedServer(default=ANSWER, choose=choose) as up, ProxyServer(up.base_url) as px:
        body = {"model": MODEL, "messages": ASK, "seed": 0, "deepconf": {"budget": 2}}
        r = httpx.post(px.base_url + "/chat/completions", json=body, timeout=60)
        log = px.wait_log(lambda d: d["outcome"] != "ok")
    error = r.json()["error"]
    assert r.status_code == 502
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_unavailable")
    assert "failed" in error["message"]
    assert (log["status"], log["outcome"], log["error"]) == (502, "error", error["message"])
    assert log["stream"] is False


def test_a_plain_answer_names_its_request_model_and_time_and_logs_ok() -> None:
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as px:
        before = int(time.time())
        body = {"model": MODEL, "messages": ASK, "deepconf": {"budget": 2, "warmup": 2}}
        r = httpx.post(px.base_url + "/chat/completions", json=body, timeout=60)
        after = int(time.time())
        log = px.wait_log(lambda d: d["status"] == 200)
    answer = r.json()
    assert r.status_code == 200 and r.headers["x-request-id"] == answer["id"] == log["id"]
    assert answer["model"] == MODEL and before <= answer["created"] <= after
    assert (log["outcome"], log["stream"], log["traces"]) == ("ok", False, 2)
    assert log["endpoint"] == "/v1/chat/completions"


def test_a_completions_request_logs_its_own_path() -> None:
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as px:
        body = {"model": MODEL, "prompt": "What is 3+4?", "deepconf": {"budget": 2}}
        r = httpx.post(px.base_url + "/completions", json=body, timeout=60)
        log = px.wait_log(lambda d: d["status"] == 200)
    assert r.json()["object"] == "text_completion"
    assert (log["endpoint"], log["id"]) == ("/v1/completions", r.json()["id"])


def test_a_streamed_answer_sends_reasoning_then_content_and_logs_ok() -> None:
    """The chosen trace's reasoning (split off upstream) goes out as its own
    reasoning_content delta before the content, and the request logs one ok line."""
    thinking = Script.from_text("So \\boxed{7}.", reasoning="Three and four.", delay=0.001)
    with ScriptedServer(default=thinking) as up, ProxyServer(up.base_url) as px:
        body = {"model": MODEL, "messages": ASK, "stream": True}
        headers, _, events = streamed(px, "/chat/completions", body | {"deepconf": {"budget": 2}})
        log = px.wait_log(lambda d: d["status"] == 200)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    said = [d for d in deltas if "reasoning_content" in d or d.get("content")]
    assert said == [{"reasoning_content": "Three and four."}, {"content": "So \\boxed{7}."}]
    assert (log["id"], log["outcome"], log["stream"], log["traces"]) == (
        headers["x-request-id"], "ok", True, 2,
    )  # fmt: skip


def test_every_streamed_chunk_names_the_request_model_and_one_creation_time() -> None:
    """Each chunk of a stream (role, content, result) carries the request's model and the
    same `created`; a best trace without reasoning sends no reasoning delta, and one cut at
    max_tokens finishes with "length"."""
    cut = Script.from_text("So \\boxed{7}.", delay=0.001, finish_reason="length")
    with ScriptedServer(default=cut) as up, ProxyServer(up.base_url) as px:
        body = {"model": MODEL, "messages": ASK, "stream": True, "deepconf": {"budget": 2}}
        _, _, events = streamed(px, "/chat/completions", body)
    assert {e["model"] for e in events} == {MODEL}
    assert len({e["created"] for e in events}) == 1
    assert isinstance(events[0]["created"], int)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert not [d for d in deltas if "reasoning_content" in d]
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}


def test_a_streamed_failure_ends_its_body_cleanly_after_the_error_event() -> None:
    """Read raw (no SDK stopping at the error): the stream that failed is a whole chunked
    body whose last event is the error object, with no [DONE], and the server logs no
    incomplete response."""
    broken = Script.from_text("one two three four \\boxed{7}", error_after=2, delay=0.001)
    choose = lambda n, body: broken if "seed" in body else None  # noqa: E731
    with ScriptedServer(default=ANSWER, choose=choose) as up, ProxyServer(up.base_url) as px:
        body = {"model": MODEL, "messages": ASK, "seed": 0, "stream": True}
        with httpx.stream(
            "POST",
            px.base_url + "/chat/completions",
            json=body | {"deepconf": {"budget": 2}},
            timeout=60,
        ) as r:
            raw = r.read()  # an unfinished body would raise here
        px.wait_log(lambda d: d["outcome"] == "error")
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert b"[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_unavailable"


def test_a_progress_chunk_goes_out_only_when_progress_changed() -> None:
    """Tokens 0.25 s apart and a 0.02 s progress interval: the stream looks a dozen times
    between tokens, and says something only when the solve moved (no repeated snapshot)."""
    slow = Script.from_text("a b c \\boxed{7}", delay=0.25)
    choose = lambda n, body: slow if "seed" in body else None  # noqa: E731
    with (
        ScriptedServer(default=ANSWER, choose=choose) as up,
        ProxyServer(up.base_url, progress_interval=0.02, defaults=TEST_DEFAULTS) as px,
    ):
        body = {"model": MODEL, "messages": ASK, "seed": 0, "stream": True}
        _, _, events = streamed(px, "/chat/completions", body | {"deepconf": {"budget": 1}})
    progress = [e["deepconf"] for e in events if e.get("deepconf", {}).get("event") == "progress"]
    assert progress and all(a != b for a, b in itertools.pairwise(progress))
