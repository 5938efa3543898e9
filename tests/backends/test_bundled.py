"""BundledBackend over a tiny random Falcon-H1 checkpoint: TokenBatches with k raw logprobs,
prompt rendering, seeds, aborts, the model card, and clear load errors."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from support.polling import until
from support.tiny_model import write_tiny_model

from deepconf.backend import Backend, TraceRequest
from deepconf.backends.bundled import BundledBackend, render_prompt
from deepconf.backends.falcon_h1 import FalconH1Model, load_tokenizer
from deepconf.config import SamplingConfig
from deepconf.errors import ModelLoadError
from deepconf.eval.bench_engine import run_numpy


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    card = {"window": 8, "temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "task": "x"}
    return write_tiny_model(tmp_path_factory.mktemp("b") / "tiny", defaults=card)


def request(index: int = 0, *, seed: int | None = 1, k: int = 20, **sampling) -> TraceRequest:
    sampling = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0} | sampling
    return TraceRequest(
        index=index, prompt="2+3=?", sampling=SamplingConfig(**sampling), top_logprobs=k, seed=seed
    )


async def collect(backend: BundledBackend, req: TraceRequest):
    return [b async for b in backend.stream(req)]


async def test_stream_yields_token_batches_with_k_raw_logprobs(folder):
    """Each batch holds (n, k) float64 logprobs, largest first; the rows count every token
    (usage.completion_tokens), and the first row equals the model's own log-softmax of the
    prompt's last logits (raw, unaffected by temperature)."""
    backend = BundledBackend(folder, max_batch=4)
    assert isinstance(backend, Backend)
    await backend.open()
    batches = await collect(backend, request(temperature=1.7))
    await backend.aclose()
    rows = np.concatenate([b.top_logprobs for b in batches])
    assert rows.dtype == np.float64 and rows.shape[1] == 20
    assert np.all(np.diff(rows, axis=1) <= 1e-6)
    assert batches[-1].finish_reason in ("stop", "length")
    assert batches[-1].usage["completion_tokens"] == rows.shape[0]
    tok, model = load_tokenizer(folder), FalconH1Model.from_pretrained(folder)
    ids = tok.encode(render_prompt(tok, "2+3=?"))
    logits = model.forward(np.array([ids]))[0, -1].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    np.testing.assert_allclose(rows[0], np.sort(logp)[::-1][:20], atol=1e-4)


async def test_k_beyond_the_vocabulary_is_nan_padded(tmp_path):
    """Asking for more logprobs than the vocabulary holds pads the row with NaN."""
    folder = write_tiny_model(tmp_path / "t")
    backend = BundledBackend(folder)
    batches = await collect(backend, request(k=300, max_tokens=3))
    await backend.aclose()
    rows = np.concatenate([b.top_logprobs for b in batches])
    assert rows.shape[1] == 300
    assert np.isfinite(rows[:, :260]).all() and np.isnan(rows[:, 260:]).all()


async def test_seeds_reproduce_and_traces_differ(folder):
    """The same seed gives the same text; the traces of one solve (seed + i) differ, and run
    concurrently they give the same texts as one at a time."""
    backend = BundledBackend(folder, max_batch=8)

    async def text(i: int) -> str:
        return "".join(b.text for b in await collect(backend, request(i, seed=100 + i)))

    one_by_one = [await text(i) for i in range(6)]
    together = await asyncio.gather(*(text(i) for i in range(6)))
    await backend.aclose()
    assert list(together) == one_by_one
    assert len(set(one_by_one)) > 3


async def test_closing_the_stream_aborts_the_trace(folder):
    """aclose() on a stream aborts its engine request and frees its slot."""
    backend = BundledBackend(folder, max_batch=2)
    await backend.open()
    async with contextlib.aclosing(backend.stream(request(max_tokens=200))) as stream:
        async for _ in stream:
            break
    engine = backend._engine
    await until(lambda: engine.stats.aborted == 1, "the closed stream's request aborted")
    assert engine.stats.aborted == 1 and engine.stats.running == 0
    assert engine.stats.tokens_generated < 200
    await backend.aclose()


def test_render_prompt_uses_the_chat_template_and_system(folder, tmp_path):
    """A str prompt becomes a user turn after the system prompt, rendered with the template;
    without a template the text is used raw."""
    tok = load_tokenizer(folder)
    text = render_prompt(tok, "hi", system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    bare = load_tokenizer(write_tiny_model(tmp_path / "bare", chat_template=False))
    assert render_prompt(bare, "hi") == "hi"
    assert render_prompt(bare, [{"role": "user", "content": "a"}], system="s") == "s\na"


def test_defaults_come_from_the_model_card(folder, tmp_path):
    """`defaults` holds deepconf.json; a folder without one has none."""
    assert BundledBackend(folder).defaults["window"] == 8
    assert BundledBackend(write_tiny_model(tmp_path / "plain")).defaults == {}


def test_missing_model_folder_is_a_clear_error(tmp_path):
    """A folder without config.json raises ModelLoadError saying what to pass."""
    with pytest.raises(ModelLoadError, match="Falcon-H1 folder"):
        BundledBackend(tmp_path / "nothing")


def test_bench_engine_numpy_run_measures_decoding(folder):
    """The benchmark's engine run decodes batch x tokens (the engine's own count, so the
    speed it reports is over real work) and reports speed and memory."""
    result = run_numpy(folder, batch=2, tokens=5, threads=None)
    assert result["tokens_generated"] == 2 * 5
    assert result["decode_tok_s"] > 0 and result["peak_rss_mb"] >= result["loaded_rss_mb"] > 0
    assert result["threads"] == 1  # a small model gets one BLAS thread
