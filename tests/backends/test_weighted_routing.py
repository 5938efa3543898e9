"""Weights per upstream (`--base-url URL#3`) from the flag to the wire: the config moves the
suffix into `weights`, a bad one is a ConfigError that says what to write, and two real
servers weighted 3:1 get 3 of every 4 trace requests, through `deepconf solve` and through
`deepconf serve`. The selection itself is pinned on a fake clock in test_routing.py.
"""

from __future__ import annotations

import json

import httpx
import pytest
from support.scripted_server import Script, ScriptedServer
from typer.testing import CliRunner

from deepconf.backends.openai_http import PROBE_TOKENS, HttpBackendConfig
from deepconf.cli import app
from deepconf.cli_common import backend_from_flags
from deepconf.errors import ConfigError
from deepconf.eval.scripted_server import MODEL
from deepconf.eval.serve_processes import Served

ANSWER = Script.from_text("So the answer is \\boxed{7}.")


def traces(server: ScriptedServer) -> list:
    """The server's streams that were traces, leaving out a capability probe."""
    return [s for s in server.streams if s.body.get("max_tokens") != PROBE_TOKENS]


def test_the_suffix_becomes_a_weight_and_the_url_is_normalised() -> None:
    cfg = HttpBackendConfig(base_urls=["http://a:8000#3", " http://b:8000/v1/ "])
    assert (cfg.base_urls, cfg.weights) == (["http://a:8000/v1", "http://b:8000/v1"], [3.0, 1.0])
    plain = HttpBackendConfig(base_urls=["http://a:8000", "http://b:8000"])
    assert plain.weights is None
    again = HttpBackendConfig.model_validate(cfg.model_dump())  # a saved config reloads as is
    assert (again.base_urls, again.weights) == (cfg.base_urls, cfg.weights)


@pytest.mark.parametrize("suffix", ["0", "-1", "abc"])
def test_a_bad_weight_flag_is_a_config_error_that_says_what_to_write(suffix: str) -> None:
    """What `deepconf solve/eval --base-url http://a:8000/v1#0` prints before exiting 1."""
    with pytest.raises(ConfigError) as info:
        backend_from_flags(["http://b:8000/v1", f"http://a:8000/v1#{suffix}"])
    assert str(info.value) == (
        f"invalid settings: base_urls: bad weight '#{suffix}' in"
        f" 'http://a:8000/v1#{suffix}': write URL#N with N a positive number, e.g."
        " http://a:8000/v1#3 for three times the traces of a URL without one (weight 1)"
    )


def test_a_url_twice_and_weights_that_do_not_fit_are_refused() -> None:
    """The same server twice (a bare host and its /v1 are one) would collapse into one
    endpoint with one weight: say so instead of picking a weight silently."""
    with pytest.raises(ValueError, match="'http://a:8000/v1' is given twice"):
        HttpBackendConfig(base_urls=["http://a:8000#3", "http://a:8000/v1#1"])
    with pytest.raises(ValueError, match="1 weights for 2 base URLs: give one per URL"):
        HttpBackendConfig(base_urls=["http://a:8000", "http://b:8000"], weights=[2.0])
    with pytest.raises(ValueError, match=r"weights given twice \(URL#weight and weights=\)"):
        HttpBackendConfig(base_urls=["http://a:8000#2", "http://b:8000"], weights=[2.0, 1.0])
    with pytest.raises(ValueError, match="greater than 0"):
        HttpBackendConfig(base_urls=["http://a:8000", "http://b:8000"], weights=[2.0, 0.0])


def test_weights_3_to_1_split_a_solve_3_to_1_at_concurrency_1() -> None:
    """`deepconf solve --base-url URL#3 --base-url URL#1`, 8 offline traces one at a time:
    6 trace requests reach the first server and 2 the second, and the model's settings and
    name are asked of /v1/models (the weight is no part of the URL; left on, it would be a
    fragment and the GET would go to /v1)."""
    with ScriptedServer(ANSWER) as a, ScriptedServer(ANSWER) as b:
        args = ["solve", "--base-url", f"{a.base_url}#3", "--base-url", f"{b.base_url}#1"]
        args += ["--mode", "offline", "--budget", "8", "--concurrency", "1", "--no-probe"]
        run = CliRunner().invoke(app, [*args, "--json", "What is 3+4?"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["answer"] == "7"
    assert (len(traces(a)), len(traces(b))) == (6, 2)
    gets = [r["path"] for r in a.requests if r["body"] == {}]
    assert gets == ["/v1/models", "/v1/models"]  # the advertised settings, then the model name


def test_serve_keeps_the_upstream_weights_and_lists_the_plain_urls() -> None:
    """`deepconf serve --upstream URL#3 --upstream URL#1`: one request of 8 traces, one at a
    time, sends 6 to the first upstream and 2 to the second; /health names the upstreams
    without their weights (the URLs whose /models it lists)."""
    with ScriptedServer(ANSWER) as a, ScriptedServer(ANSWER) as b:
        flags = ["--mode", "offline", "--budget", "8", "--concurrency", "1", "--no-probe"]
        upstreams = ["--upstream", f"{a.base_url}#3", "--upstream", f"{b.base_url}#1"]
        with Served(["serve", *upstreams, "--log-level", "warning", *flags]) as served:
            assert served.health()["upstreams"] == [a.base_url, b.base_url]
            body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 3+4?"}]}
            answer = httpx.post(served.root + "/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert (len(traces(a)), len(traces(b))) == (6, 2)
