"""`deepconf serve` end to end: the real openai client -> the proxy on loopback -> the real HTTP
backend -> a real upstream on loopback: the scripted server, whose records show what was
really requested and which connections were closed, and the bundled model's own server
(`serve-model`) over a tiny random checkpoint, whose /metrics count generated and aborted
sequences."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from support.proxy_runner import LoopbackServer, ProxyServer
from support.scripted_server import CONFIDENT, MODEL, UNCONFIDENT, Script, ScriptedServer
from support.tiny_model import write_tiny_model

from deepconf.backends.bundled import load_engine
from deepconf.backends.model_server import create_app as create_model_app

ANSWER = Script.from_text(
    "The answer is \\boxed{7}.", reasoning="Three plus four makes seven.", delay=0.001
)
ASK = [{"role": "user", "content": "What is 3+4?"}]


def client(proxy: ProxyServer, key: str = "k", **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, **kw)


def traces_of(upstream: ScriptedServer) -> list:
    """The upstream streams that were traces (the capability probe sends no seed)."""
    return [s for s in upstream.streams if "seed" in s.body]


def slow(text: str, n: int = 40, delay: float = 0.05) -> Script:
    """A trace that takes n * delay seconds: long enough to watch it run."""
    return Script.from_text(" ".join(["step"] * n) + f" \\boxed{{{text}}}", delay=delay)


def slow_traces(script: Script) -> ScriptedServer:
    """An upstream whose traces (requests with a seed) play `script`, while the backend's
    capability probe (no seed) gets a quick answer."""
    return ScriptedServer(default=ANSWER, choose=lambda n, body: script if "seed" in body else None)


def test_plain_chat_returns_the_best_winning_trace_with_true_usage() -> None:
    """Two of three traces say 7; the content is the more confident of those two (not the
    first one), and usage counts every token the upstream sent and every prompt."""
    mid = [-0.4, *(-6.0 - 0.1 * j for j in range(30))]  # between UNCONFIDENT and CONFIDENT
    by_seed = {
        0: Script.from_text("Surely \\boxed{7}.", top=mid, delay=0.001),
        1: Script.from_text("Certainly it is \\boxed{7}.", top=CONFIDENT, delay=0.001),
        2: Script.from_text("Maybe \\boxed{9}.", top=UNCONFIDENT, delay=0.001),
    }
    with ScriptedServer(by_seed=by_seed) as up, ProxyServer(up.base_url) as proxy:
        r = client(proxy).chat.completions.create(
            model=MODEL,
            messages=ASK,
            seed=0,
            # offline: every trace runs to its end, so the vote does not depend on timing
            extra_body={"deepconf": {"mode": "offline", "budget": 3, "offline_method": "mean"}},
        )
    dc = r.model_extra["deepconf"]
    assert dc["answer"] == "7"
    assert (dc["mode"], dc["offline_method"], dc["policy"]) == ("offline", "mean", None)
    assert r.choices[0].message.content == "Certainly it is \\boxed{7}."
    assert dc["chosen_trace"] == 1
    assert [t["answer"] for t in dc["traces"]] == ["7", "7", "9"]
    sent = sum(s.tokens_sent for s in traces_of(up))
    assert r.usage.completion_tokens == sent == dc["tokens"]["total"]
    assert r.usage.prompt_tokens == 5 * 3  # the scripted server reports 5 prompt tokens
    assert r.usage.total_tokens == sent + 15
    assert {v["answer"]: v["count"] for v in dc["votes"]} == {"7": 2, "9": 1}


def test_request_settings_reach_the_upstream_and_the_solve() -> None:
    """extra_body's budget sets how many traces run; the request's sampling fields (seed,
    temperature, top_p, max_tokens, stop, the system message) reach every upstream trace."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as proxy:
        messages = [{"role": "system", "content": "Be brief."}, *ASK]
        r = client(proxy).chat.completions.create(
            model=MODEL,
            messages=messages,
            seed=40,
            temperature=0.3,
            top_p=0.5,
            max_tokens=3,
            stop=["###"],
            extra_body={"deepconf": {"mode": "offline", "budget": 5}},
        )
    traces = traces_of(up)
    assert len(traces) == 5 == len(r.model_extra["deepconf"]["traces"])
    assert sorted(s.body["seed"] for s in traces) == [40, 41, 42, 43, 44]
    for s in traces:
        assert s.body["messages"] == messages
        assert (s.body["temperature"], s.body["top_p"], s.body["max_tokens"]) == (0.3, 0.5, 3)
        assert s.body["stop"] == ["###"]
    assert r.choices[0].finish_reason == "length"  # 3 tokens cut the script short
    assert r.model_extra["deepconf"]["mode"] == "offline"


def test_streaming_sends_progress_while_traces_run() -> None:
    """Progress chunks arrive while upstream traces are still streaming (no buffered fake
    stream), then reasoning, content, a finish chunk with the result, usage, and the end."""
    script = slow("7", n=12, delay=0.03)
    with ScriptedServer(default=script) as up, ProxyServer(up.base_url) as proxy:
        stream = client(proxy).chat.completions.create(
            model=MODEL,
            messages=ASK,
            stream=True,
            seed=0,
            stream_options={"include_usage": True},
            extra_body={"deepconf": {"budget": 2}},
        )
        chunks, unfinished_at_progress = [], []
        for chunk in stream:
            dc = (chunk.model_extra or {}).get("deepconf")
            if dc and dc["event"] == "progress":
                unfinished_at_progress.append(sum(not s.finished for s in traces_of(up)))
            chunks.append(chunk)
    progress = [c.model_extra["deepconf"] for c in chunks if c.model_extra.get("deepconf")]
    assert progress[0]["event"] == "progress" and progress[-1]["event"] == "result"
    assert any(n > 0 for n in unfinished_at_progress), "progress only came after the traces"
    assert all(c.choices[0].delta.content in (None, "") for c in chunks[:-3] if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.endswith("\\boxed{7}")
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].model_extra["deepconf"]["answer"] == "7"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == sum(s.tokens_sent for s in traces_of(up)) > 0


def test_completions_endpoint_plain_and_streaming() -> None:
    """/v1/completions runs the traces on the upstream's completions API and returns text."""
    script = Script.from_text("so the result is \\boxed{12}.", delay=0.001)
    with ScriptedServer(default=script) as up, ProxyServer(up.base_url) as proxy:
        c = client(proxy)
        r = c.completions.create(model=MODEL, prompt="5+7=", extra_body={"deepconf": {"budget": 2}})
        assert r.choices[0].text == "so the result is \\boxed{12}."
        assert r.model_extra["deepconf"]["answer"] == "12"
        text = "".join(
            ch.choices[0].text
            for ch in c.completions.create(model=MODEL, prompt="5+7=", stream=True)
            if ch.choices
        )
        assert text == "so the result is \\boxed{12}."
    assert all(s.path == "/v1/completions" for s in up.streams)
    assert {s.body["prompt"] for s in traces_of(up) or up.streams[1:]} == {"5+7="}


def test_models_lists_the_upstream_models() -> None:
    """/v1/models is the upstream's list."""
    with ScriptedServer() as up, ProxyServer(up.base_url) as proxy:
        assert [m.id for m in client(proxy).models.list()] == [MODEL]


def test_api_key_is_checked() -> None:
    """With --api-key set, a wrong or missing key is an AuthenticationError; the right one
    works."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url, api_key="s3cret") as px:
        with pytest.raises(openai.AuthenticationError) as info:
            client(px, key="wrong").chat.completions.create(model=MODEL, messages=ASK)
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(px, key="wrong").models.list()
        r = client(px, key="s3cret").chat.completions.create(model=MODEL, messages=ASK)
        assert r.model_extra["deepconf"]["answer"] == "7"
    assert len(up.streams) > 0  # only the accepted request reached the upstream


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"deepconf": {"budget": 4, "windw": 8}}, "deepconf.windw", "unknown DeepConf setting"),
        ({"deepconf": {"variant": "medium"}}, "deepconf.variant", "'low' or 'high'"),
        ({"deepconf": {"budget": 4, "warmup": 8}}, "deepconf", "exceeds the trace budget"),
        ({"deepconf": {"budget": 0}}, "deepconf.budget", "greater than or equal to 1"),
        ({"n": 3}, "n", "n must be 1"),
        ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ],
)
def test_malformed_requests_are_bad_request_errors(extra: dict, param: str, words: str) -> None:
    """Bad settings give a 400 (BadRequestError) naming the parameter, before any upstream
    request is made."""
    with ScriptedServer(default=ANSWER) as up, ProxyServer(up.base_url) as proxy:
        with pytest.raises(openai.BadRequestError) as info:
            client(proxy).chat.completions.create(model=MODEL, messages=ASK, extra_body=extra)
        assert info.value.param == param
        assert words in info.value.message
        assert up.streams == []


def test_too_many_concurrent_solves_get_429_with_retry_after() -> None:
    """Past --max-concurrent-solves, a request is refused at once with 429 and Retry-After;
    once the running solve ends a new one is accepted."""
    with (
        ScriptedServer(default=slow("7", n=10, delay=0.05)) as up,
        ProxyServer(up.base_url, max_concurrent_solves=1, retry_after=3) as proxy,
    ):
        c = client(proxy)
        first = c.chat.completions.create(model=MODEL, messages=ASK, stream=True)
        next(iter(first))  # the solve is running, and stays so until `first` is closed
        # Refused at once: a request queued behind the running solve would block until
        # `first` closes below, and this call would time out instead of raising 429.
        with pytest.raises(openai.RateLimitError) as info:
            c.with_options(timeout=60).chat.completions.create(model=MODEL, messages=ASK)
        assert httpx.get(proxy.root + "/health").json()["active_solves"] == 1
        assert info.value.response.headers["retry-after"] == "3"
        assert info.value.code == "too_many_solves"
        first.close()
        record = proxy.wait_log(lambda d: d["outcome"] == "client_disconnected")
        assert (record["status"], record["stream"]) == (499, True)
        up.default = ANSWER
        r = c.chat.completions.create(model=MODEL, messages=ASK)
        assert r.model_extra["deepconf"]["answer"] == "7"


def test_streaming_disconnect_closes_every_upstream_stream() -> None:
    """A client that drops a streaming request mid-solve cancels the solve: the upstream
    records every trace stream as disconnected by the client, none finished."""
    with slow_traces(slow("7", n=60, delay=0.05)) as up, ProxyServer(up.base_url) as px:
        stream = client(px).chat.completions.create(
            model=MODEL, messages=ASK, stream=True, seed=1, extra_body={"deepconf": {"budget": 3}}
        )
        for chunk in stream:
            if (chunk.model_extra or {}).get("deepconf"):
                break
        assert len(traces_of(up)) == 2  # the warm-up traces are running
        stream.close()
        assert up.wait_for(lambda: all(s.disconnected for s in traces_of(up)), timeout=5)
        assert not any(s.finished for s in traces_of(up))
        record = px.wait_log(lambda d: d["outcome"] == "client_disconnected")
    assert record["status"] == 499 and record["stream"] is True


def test_plain_request_disconnect_closes_every_upstream_stream() -> None:
    """A non-streaming client that gives up (timeout) cancels its solve and its upstream
    streams too."""
    with slow_traces(slow("7", n=60, delay=0.05)) as up, ProxyServer(up.base_url) as px:
        with pytest.raises(openai.APITimeoutError):
            client(px, timeout=0.5).chat.completions.create(
                model=MODEL, messages=ASK, seed=1, extra_body={"deepconf": {"budget": 3}}
            )
        assert up.wait_for(lambda: all(s.disconnected for s in traces_of(up)), timeout=5)
        assert len(traces_of(up)) == 2 and not any(s.finished for s in traces_of(up))
        record = px.wait_log(lambda d: d["outcome"] == "client_disconnected")
        assert (record["status"], record["stream"]) == (499, False)


def test_serve_command_runs_a_server_with_flag_defaults_and_json_logs() -> None:
    """`deepconf serve` as a process: its DeepConf flags are the defaults a request gets
    (--budget 3 -> 3 traces), --api-key guards it, and each request logs one JSON line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The `deepconf` console script. -P: do not put the working directory on sys.path, where
    # the source folder deepconf/ (without backends/, eval/) would shadow the installed one.
    runner = "from deepconf.cli import app; app()"
    with ScriptedServer(default=ANSWER) as up:
        args = ["--upstream", up.base_url, "--port", str(port), "--api-key", "cli-key"]
        args += ["--budget", "3", "--window", "2", "--concurrency", "3", "--seed", "10"]
        proc = subprocess.Popen(
            [sys.executable, "-P", "-c", runner, "serve", *args], stderr=subprocess.PIPE, text=True
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"deepconf serve exited: {proc.communicate()[1]}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/health").status_code == 200:
                        break
                time.sleep(0.1)
            c = openai.OpenAI(base_url=base + "/v1", api_key="cli-key", max_retries=0)
            r = c.chat.completions.create(model=MODEL, messages=ASK)
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base + "/v1", api_key="no", max_retries=0).models.list()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert len(r.model_extra["deepconf"]["traces"]) == 3
    assert sorted(s.body["seed"] for s in traces_of(up)) == [10, 11, 12]
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [d["status"] for d in logged if d["endpoint"] == "/v1/chat/completions"] == [200]
    assert logged[0]["id"] == r.id and logged[0]["traces"] == 3


# --- in front of the bundled model's own server (real engine, real logprobs) -------------------


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    """`serve-model`'s app over a tiny random Falcon-H1 checkpoint, on loopback."""
    folder = write_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    engine, tokenizer, name, _ = load_engine(folder, max_batch=8, max_len=30_000)
    server = LoopbackServer(create_model_app(engine, tokenizer, model_name=name))
    with server:
        server.model = name
        yield server
    engine.close()


def metrics(server: LoopbackServer) -> dict:
    return httpx.get(server.root + "/metrics").json()


def test_usage_matches_what_the_model_server_generated(model_server: LoopbackServer) -> None:
    """Over a real engine, usage.completion_tokens is exactly the tokens the model server
    says it generated for the solve, and prompt_tokens its prompt count per trace x traces.
    (Offline mode: no trace is cut, so no token is generated after an abort and never
    received; online, each pruned trace may cost the server a token or so more.)"""
    with ProxyServer(model_server.base_url) as px:
        c = client(px)
        ask = {"model": model_server.model, "messages": ASK, "max_tokens": 16, "seed": 0}
        c.chat.completions.create(**ask, extra_body={"deepconf": {"budget": 1}})  # opens
        before = metrics(model_server)
        r = c.chat.completions.create(
            **ask, extra_body={"deepconf": {"mode": "offline", "budget": 3}}
        )
        after = metrics(model_server)
    dc = r.model_extra["deepconf"]
    assert len(dc["traces"]) == 3
    assert r.usage.completion_tokens == after["tokens_generated"] - before["tokens_generated"]
    assert r.usage.prompt_tokens == 3 * dc["prompt_tokens_per_trace"] > 0
    assert after["requests_finished"] - before["requests_finished"] == 3


def test_disconnect_aborts_the_model_servers_sequences(model_server: LoopbackServer) -> None:
    """Dropping a streaming DeepConf request aborts every sequence it had running on the
    model server: its /metrics counts them aborted and nothing is left running."""
    with ProxyServer(model_server.base_url) as px:
        c = client(px)
        opening = {"budget": 1}  # opens the backend: its probe is a finished request
        c.chat.completions.create(
            model=model_server.model, messages=ASK, max_tokens=4, extra_body={"deepconf": opening}
        )
        before = metrics(model_server)
        stream = c.chat.completions.create(
            model=model_server.model,
            messages=ASK,
            max_tokens=25_000,
            seed=1,  # seeds 1 and 2 run for thousands of tokens on this checkpoint
            stream=True,
            extra_body={"deepconf": {"budget": 2}},
        )
        for chunk in stream:
            dc = (chunk.model_extra or {}).get("deepconf")
            if dc and dc["tokens"] > 0:
                break
        stream.close()
        deadline = time.monotonic() + 5
        while (m := metrics(model_server))["requests_aborted"] - before["requests_aborted"] < 2:
            assert time.monotonic() < deadline, f"not aborted: {m}"
            time.sleep(0.01)
    assert m["requests_running"] == 0
    assert m["requests_finished"] == before["requests_finished"]
