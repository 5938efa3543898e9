"""`serve-model` against hostile requests, on loopback over a tiny random checkpoint: a 50 MB
body (declared, and streamed without a length) is refused with 413 before it is read; a
prompt too long for the context is refused on its size, before the tokenizer sees it; the
tokenizer runs off the event loop (/health answers while it works); a negative seed and token
ids outside the vocabulary are 400s naming the field; `solve --seed -1` is a settings error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.live_server import LoopbackServer
from support.tiny_model import write_tiny_model

from deepconf.backends.bundled import load_engine
from deepconf.backends.model_server import create_app

MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
FIFTY_MB = 50 * 1024 * 1024


class WatchedTokenizer:
    """The checkpoint's tokenizer, recording what it is asked to encode; `hold` makes encode
    wait until released (a tokenizer still working on a huge prompt)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.encoded: list[int] = []  # lengths of the texts encoded
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def encode(self, text: str, **kw: Any) -> list[int]:
        self.encoded.append(len(text))
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(30), "never released"
        return self._inner.encode(text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackServer, Any]]:
    folder = write_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    engine, tok, name, _ = load_engine(folder, max_batch=4, max_len=256)
    watched = WatchedTokenizer(tok)
    server = LoopbackServer(create_app(engine, watched, model_name=name)).start()
    yield server, watched
    server.stop()
    engine.close()


@pytest.fixture()
def http(served: tuple[LoopbackServer, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].root, timeout=60) as client:
        yield client


def _error(r: httpx.Response) -> dict:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_declared_50_mb_body_is_refused_before_it_is_read(http: httpx.Client) -> None:
    """Content-Length says 50 MB: 413 in OpenAI's shape, and the server goes on answering."""
    body = b'{"prompt": "' + b"x" * FIFTY_MB + b'"}'
    r = http.post("/v1/completions", content=body)
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"
    assert http.get("/health").status_code == 200


def test_a_streamed_50_mb_body_is_refused_once_past_the_limit(http: httpx.Client) -> None:
    """No Content-Length (chunked): reading stops at the limit with a 413; the tokenizer never
    sees any of it."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(50):
            yield b"y" * (1024 * 1024)
        yield b'"}'

    r = http.post("/v1/completions", content=chunks())
    assert r.status_code == 413
    assert http.get("/health").status_code == 200


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(
    served: tuple[LoopbackServer, Any], http: httpx.Client
) -> None:
    """A 1M-character chat prompt (far past 256 tokens of at most a few characters each):
    400 naming messages, and the tokenizer was never called with it."""
    _, watched = served
    before = list(watched.encoded)
    big = [{"role": "user", "content": "z" * 1_000_000}]
    r = http.post("/v1/chat/completions", json={"messages": big})
    assert r.status_code == 400 and _error(r)["param"] == "messages"
    assert "context" in _error(r)["message"]
    r = http.post("/v1/completions", json={"prompt": "z" * 1_000_000})
    assert r.status_code == 400 and _error(r)["param"] == "prompt"
    assert watched.encoded == before


def test_the_tokenizer_runs_off_the_event_loop(
    served: tuple[LoopbackServer, Any], http: httpx.Client
) -> None:
    """While the tokenizer is busy with one request's prompt, /health is answered; released,
    the request completes."""
    _, watched = served
    watched.hold, watched.entered = threading.Event(), threading.Event()
    result: dict[str, httpx.Response] = {}

    def ask() -> None:
        with httpx.Client(base_url=http.base_url, timeout=60) as other:
            result["r"] = other.post("/v1/completions", json={"prompt": "2+3=", "max_tokens": 2})

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        assert watched.entered.wait(30)  # the tokenizer is working on it now
        assert http.get("/health").status_code == 200
    finally:
        watched.hold.set()
        asker.join()
        watched.hold = None
    assert result["r"].status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_negative_seed_is_a_400_naming_seed(http: httpx.Client, stream: bool) -> None:
    """seed -1 was a plain-text 500 (streaming: a cut connection): now a 400 naming seed,
    streamed or not."""
    body = {"messages": MESSAGES, "seed": -1, "max_tokens": 2, "stream": stream}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and _error(r)["param"] == "seed"


def test_token_ids_outside_the_vocabulary_are_a_400(http: httpx.Client) -> None:
    """A prompt of token ids must name tokens the model has."""
    r = http.post("/v1/completions", json={"prompt": [1, 2, 10**9], "max_tokens": 2})
    assert r.status_code == 400 and _error(r)["param"] == "prompt"
    r = http.post("/v1/completions", json={"prompt": [-1], "max_tokens": 2})
    assert r.status_code == 400


def test_solve_with_a_negative_seed_is_a_settings_error_naming_seed() -> None:
    """`deepconf solve --seed -1` on the bundled model: exit 1 with a message naming seed,
    before any trace runs (it used to end with 'traces failed ... is the server up')."""
    from typer.testing import CliRunner

    from deepconf.cli import app

    result = CliRunner().invoke(app, ["solve", "--seed", "-1", "2+3"])
    assert result.exit_code == 1
    assert "seed" in result.output and "traces failed" not in result.output
