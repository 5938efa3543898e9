"""The capability probe (backends/logprob_probe.py): what it asks, how it judges, what it says.

The probe's outcomes against servers are told in tests/backends/test_openai_http.py and
test_stream_integrity.py; these tests pin what mutation testing (.ci/mutation) found loose:
the requests it sends (over a real loopback server), and its judgement and words (over a
scripted stream function, since the probe only sees token batches).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest
from support.scripted_server import Script, ScriptedServer, scripted_server

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.backends.logprob_probe import PROBE_TOKENS, probe_logprobs
from deepconf.backends.openai_http import HttpBackendConfig, OpenAIHttpBackend
from deepconf.errors import CapabilityError

__all__ = ["scripted_server"]  # the fixture, imported for pytest

WHERE = "http://gpu-7:8000/v1 (m, /chat/completions)"


def streamer(*attempts: list[TokenBatch]):
    """A stream function whose n-th call plays attempts[n]; records the requests."""
    requests: list[TraceRequest] = []

    async def stream(request: TraceRequest) -> AsyncIterator[TokenBatch]:
        requests.append(request)
        for batch in attempts[len(requests) - 1]:
            yield batch

    return stream, requests


def rows(*entries: int, k: int = 5) -> np.ndarray:
    """One row per position with `entries` real logprobs, NaN-padded to k."""
    out = np.full((len(entries), k), np.nan)
    for i, n in enumerate(entries):
        out[i, :n] = -np.arange(1.0, n + 1)
    return out


def silent_probes(_n: int, body: dict) -> Script | None:
    """The model ends at once on the probe's prompts (no seed), answers traces normally."""
    return Script([], finish_reason="stop") if body.get("seed") is None else None


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_the_probe_asks_for_k_with_a_greeting_then_with_text_any_model_continues(
    scripted_server: ScriptedServer, api: str
) -> None:
    """Chat sends user messages, completions raw text; both ask for the k being checked,
    first PROBE_TOKENS at the default temperature, then twice as many at temperature 1 so a
    merely likely end token is not chosen every time. A silent model gets both tries."""
    scripted_server.choose = silent_probes
    backend = OpenAIHttpBackend(
        HttpBackendConfig(base_urls=[scripted_server.base_url], api=api, top_logprobs=7)
    )
    await backend.open()  # both probes saw no token: the traces will judge k
    await backend.aclose()
    first, second = (s.body for s in scripted_server.streams)
    if api == "chat":
        assert first["messages"] == [{"role": "user", "content": "Say hello."}]
        assert second["messages"] == [
            {"role": "user", "content": "Count from one to twenty in words, separated by commas."}
        ]
        assert (first["top_logprobs"], second["top_logprobs"]) == (7, 7)
    else:
        assert (first["prompt"], second["prompt"]) == ("Hello", "1, 2, 3, 4, 5, 6,")
        assert (first["logprobs"], second["logprobs"]) == (7, 7)
    assert (first["max_tokens"], second["max_tokens"]) == (PROBE_TOKENS, 2 * PROBE_TOKENS)
    assert (second["temperature"], second["top_p"]) == (1.0, 1.0)
    assert "seed" not in first and "seed" not in second


async def test_a_probe_that_saw_no_token_twice_returns_none_and_says_so(caplog) -> None:
    """No batch at all in both tries: nothing is known yet (None), and the log says who,
    how many tries and which k the first traces will check."""
    stream, requests = streamer([], [TokenBatch(np.empty((0, 5)), finish_reason="stop")])
    with caplog.at_level(logging.WARNING, logger="deepconf.backends.logprob_probe"):
        assert await probe_logprobs(stream, "chat", 5, WHERE) is None
    assert [r.index for r in requests] == [-1, -1]  # probes are never trace indices
    assert [r.getMessage() for r in caplog.records] == [
        f"{WHERE}: the probe saw 0 tokens in 2 tries (the model ended at once), so k=5 is"
        " checked on the first traces instead"
    ]


async def test_a_probe_that_saw_text_without_logprobs_counts_every_character() -> None:
    """Text and reasoning without any logprob: refused at once, counting both kinds over
    every batch."""
    batches = [
        TokenBatch(rows(0), text="ab", reasoning="d"),
        TokenBatch(rows(0), text="c", reasoning="e"),
    ]
    stream, requests = streamer(batches)
    with pytest.raises(CapabilityError) as info:
        await probe_logprobs(stream, "chat", 5, WHERE)
    assert str(info.value) == (
        f"{WHERE}: the probe got 5 characters of text but no logprobs, and DeepConf needs"
        " top-k logprobs per token. Use a server that returns them (vLLM, SGLang, llama.cpp's"
        " server); OpenAI's reasoning models and some hosted APIs return none"
    )
    assert len(requests) == 1


async def test_a_position_with_a_single_logprob_is_a_logprob() -> None:
    """One entry per position is few, but it is logprobs: the probe reports 1, the fullest
    count, and the caller names the shortfall."""
    stream, _ = streamer([TokenBatch(rows(1, 1, 1), text="hi")])
    assert await probe_logprobs(stream, "chat", 5, WHERE) == 1


async def test_the_served_count_is_the_fullest_position_over_every_batch() -> None:
    """A cap is the same at every position; collapse and stripping only lower some. So the
    fullest position is the answer, even when most positions are short (llama.cpp merging
    equal token strings), and wherever it comes."""
    stream, _ = streamer([TokenBatch(rows(5, 2)), TokenBatch(rows(5, 5, 3))])
    assert await probe_logprobs(stream, "completions", 5, WHERE) == 5
    stream, _ = streamer([TokenBatch(rows(4, 4, 4)), TokenBatch(rows(4, 5, 4))])
    assert await probe_logprobs(stream, "completions", 5, WHERE) == 5
    stream, _ = streamer([TokenBatch(rows(3, 2, 3, 3))])
    assert await probe_logprobs(stream, "completions", 5, WHERE) == 3


async def test_placeholder_logprobs_are_refused_in_words() -> None:
    placeholder = np.array([[0.0, -100.0, -100.0], [0.0, -100.0, np.nan]])  # after sanitising
    stream, _ = streamer([TokenBatch(placeholder, text="hi")])
    with pytest.raises(CapabilityError) as info:
        await probe_logprobs(stream, "chat", 3, WHERE)
    assert str(info.value) == (
        f"{WHERE} returns placeholder logprobs (every value is 0 or -9999), so confidence"
        " would be meaningless: use a server that returns real logprobs"
    )
