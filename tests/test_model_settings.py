"""A model's own settings travel with it (deepconf.model_settings): the card fills exactly the
settings a caller left unset, in the Python API, the CLI, the bundled backend and serve-model,
and serve-model advertises them in /v1/models for `deepconf solve --base-url`."""

from __future__ import annotations

import json

import httpx
import pytest
from support.live_server import LoopbackServer
from support.tiny_model import write_tiny_model
from typer.testing import CliRunner

from deepconf.backends.bundled import BundledBackend, load_engine
from deepconf.backends.model_server import create_app
from deepconf.cli import app
from deepconf.cli_common import config_and_card
from deepconf.config import DeepConfConfig, SamplingConfig
from deepconf.errors import ConfigError, ConnectError
from deepconf.model_settings import (
    advertised_settings,
    card_settings,
    sampling_with_card,
    with_model_defaults,
)

CARD = {
    "task": "tiny",
    "window": 8,
    "tail": 8,
    "temperature": 0.0,  # greedy: repeated requests give one text
    "top_p": 1.0,
    "max_tokens": 5,
    "top_logprobs": 20,
    "measured": {"single_accuracy": 0.5},
}


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("card") / "tiny", defaults=CARD)


@pytest.fixture(scope="module")
def served(carded):
    engine, tok, name, card = load_engine(carded, max_batch=8, max_len=128)
    srv = LoopbackServer(create_app(engine, tok, model_name=name, card=card)).start()
    yield srv
    srv.stop()
    engine.close()


def test_the_card_fills_only_what_was_left_unset():
    """An explicit setting wins even when it equals the config default (window=2048 stays
    2048); every unset one the card names takes the card's value; `applied` lists only the
    values that changed (k=20 is already the default) and never non-settings (task)."""
    given = DeepConfConfig(budget=32, confidence={"window": 2048}, sampling={"seed": 3})
    config, applied = with_model_defaults(given, CARD)
    assert config.confidence.window == 2048 and config.confidence.tail == 8
    assert (config.sampling.temperature, config.sampling.max_tokens) == (0.0, 5)
    assert config.sampling.seed == 3 and config.budget == 32
    assert applied == {"tail": 8, "temperature": 0.0, "top_p": 1.0, "max_tokens": 5}
    assert with_model_defaults(given, None) == (given, {})
    assert "task" not in card_settings(CARD) and "measured" not in card_settings(CARD)


def test_cli_flags_count_as_set_and_the_card_fills_the_rest():
    """config_and_card: a flag beats the card; the card beats the config's defaults."""
    config, applied = config_and_card(CARD, window=4, budget=8)
    assert config.confidence.window == 4 and config.confidence.tail == 8
    assert config.warmup == 8  # the default warm-up (16) shrunk to the budget
    assert "window" not in applied and applied["max_tokens"] == 5


def test_a_broken_card_is_a_config_error():
    """A card value out of range names the setting and the file to fix."""
    with pytest.raises(ConfigError, match=r"deepconf\.json"):
        with_model_defaults(None, {"window": 0})
    with pytest.raises(ConfigError, match="temperature"):
        sampling_with_card(SamplingConfig(), {"temperature": -1.0})


def test_sampling_with_card_keeps_what_the_caller_set():
    """A backend applies the card's sampling only to fields the caller did not set."""
    mine = sampling_with_card(SamplingConfig(temperature=0.7), CARD)
    assert (mine.temperature, mine.top_p, mine.max_tokens) == (0.7, 1.0, 5)
    assert sampling_with_card(SamplingConfig(), {}) == SamplingConfig()


async def test_bundled_backend_samples_as_its_card_says_when_the_caller_did_not(carded):
    """DeepConf(BundledBackend(folder)) with a config built without the card still gets the
    card's sampling: every trace stops at the card's max_tokens (5), not the config's 8192."""
    from deepconf.controller import DeepConf

    backend = BundledBackend(carded)
    try:
        config = DeepConfConfig(mode="offline", budget=3)
        result = await DeepConf(backend, config).solve("hi")
    finally:
        await backend.aclose()
    assert [t.tokens for t in result.traces] == [5, 5, 5]


def test_deepconf_over_a_carded_backend_takes_the_card_s_confidence_settings(carded):
    """DeepConf(BundledBackend(folder), DeepConfConfig()) prunes with the card's window and
    tail (8), not the paper's 2048, while a window the caller set stays theirs."""
    from deepconf.controller import DeepConf

    backend = BundledBackend(carded)
    engine = DeepConf(backend, DeepConfConfig())
    assert (engine.config.confidence.window, engine.config.confidence.tail) == (8, 8)
    assert engine.config.sampling.max_tokens == 5
    mine = DeepConf(backend, DeepConfConfig(confidence={"window": 2048}))
    assert (mine.config.confidence.window, mine.config.confidence.tail) == (2048, 8)
    assert DeepConf(object()).config == DeepConfConfig()  # no card: the defaults


def test_serve_model_advertises_its_card_in_v1_models(served):
    """GET /v1/models lists the model with a `deepconf` object: the card's settings and its
    task, nothing else of the card."""
    entry = httpx.get(served.base_url + "/models").json()["data"][0]
    assert entry["deepconf"] == {**card_settings(CARD), "task": "tiny"}
    assert advertised_settings([served.base_url], None) == (entry["id"], card_settings(CARD))
    assert advertised_settings([served.base_url], "other-model") == ("other-model", {})


def test_serve_model_applies_the_card_to_what_a_request_leaves_out(served):
    """A request without max_tokens or temperature gets the card's (5 tokens, greedy: two
    unseeded requests say the same); one that sets them keeps its own."""
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    url = served.base_url + "/chat/completions"
    first, second = (httpx.post(url, json=ask).json() for _ in range(2))
    assert first["usage"]["completion_tokens"] <= 5
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    own = httpx.post(url, json={**ask, "max_tokens": 9, "ignore_eos": True}).json()
    assert own["usage"]["completion_tokens"] == 9


def test_solve_base_url_uses_the_advertised_settings_and_says_so(served):
    """`deepconf solve --base-url` takes the settings the server advertises for every flag
    left unset, says which in a note, and a flag overrides its one."""
    args = ["solve", "--base-url", served.base_url, "--budget", "4", "--seed", "0"]
    shown = CliRunner().invoke(app, [*args, "hi"])
    assert "window 8, tail 8, temperature 0.0, top_p 1.0, max_tokens 5" in shown.output
    record = json.loads(CliRunner().invoke(app, [*args, "--json", "hi"]).stdout)
    assert all(t["tokens"] <= 5 for t in record["traces"])
    longer = json.loads(
        CliRunner().invoke(app, [*args, "--json", "--max-tokens", "7", "hi"]).stdout
    )
    assert max(t["tokens"] for t in longer["traces"]) > 5


def test_a_server_that_advertises_nothing_leaves_the_defaults(tmp_path):
    """A server without a card (vLLM, llama.cpp) advertises nothing: the config's own
    defaults stay and no note is printed; nothing listening is a ConnectError."""
    engine, tok, name, _ = load_engine(write_tiny_model(tmp_path / "plain"), max_len=64)
    srv = LoopbackServer(create_app(engine, tok, model_name=name)).start()
    try:
        assert advertised_settings([srv.base_url], None) == (name, {})
        result = CliRunner().invoke(
            app,
            ["solve", "--base-url", srv.base_url, "--budget", "2", "--max-tokens", "3", "hi"],
        )
        assert "from the settings" not in result.output
    finally:
        srv.stop()
        engine.close()
    with pytest.raises(ConnectError, match="start the server or fix --base-url"):
        advertised_settings(["http://127.0.0.1:9/v1"], None)
