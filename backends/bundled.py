"""BundledBackend: DeepConf on the in-process numpy Falcon-H1 engine, no server needed.

It loads a Hugging Face-format Falcon-H1 folder (default: the model shipped in
``deepconf/backends/bundled_model/``), runs one `AsyncEngine` over it (continuous batching, one
shared prefill for the traces of a prompt) and turns each `TraceRequest` into a stream of
`TokenBatch`es carrying the raw top-k logprobs. Closing a stream aborts its trace before the
next decode step. It does not speak HTTP (that is `model_server`).

    backend = BundledBackend()                   # or BundledBackend("path/to/falcon-h1")
    print(backend.defaults)                       # the model card: window, temperature, ...
    await backend.open()
    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for batch in stream: ...
    await backend.aclose()
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from deepconf.backend import Message, Prompt, TokenBatch, TraceRequest, token_usage
from deepconf.backends.async_engine import AsyncEngine
from deepconf.backends.engine import Engine, SamplingParams
from deepconf.errors import ModelLoadError
from deepconf.model_settings import sampling_with_card

__all__ = ["BundledBackend", "bundled_model_path", "load_engine", "render_prompt"]

BUNDLED_NAME = "deepconf-bundled"
CARD_FILE = "deepconf.json"


def bundled_model_path() -> Path:
    """The folder of the model shipped inside the package (it may not be there yet)."""
    return Path(str(importlib.resources.files("deepconf.backends") / "bundled_model"))


def resolve_model_path(model_path: str | Path | None) -> Path:
    folder = Path(model_path) if model_path is not None else bundled_model_path()
    if not (folder / "config.json").is_file():
        where = "the bundled model folder" if model_path is None else "the model folder"
        raise ModelLoadError(
            f"{where} {folder} has no config.json. Pass a Hugging Face-format Falcon-H1 "
            "folder (config.json, model.safetensors, tokenizer.json), or reinstall deepconf "
            "to get the bundled model"
        )
    return folder


def read_defaults(folder: Path) -> dict[str, Any]:
    """The model card's recommended settings (deepconf.json), or {} when there is none."""
    path = folder / CARD_FILE
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(card, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return card


class _TextDecoder:
    """The tokenizer as the engine's text source: special tokens are not text (vLLM's
    skip_special_tokens default)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_engine(
    model_path: str | Path | None, *, max_batch: int = 64, max_len: int | None = None
) -> tuple[AsyncEngine, Any, str, dict[str, Any]]:
    """Load a checkpoint folder into a running AsyncEngine.

    Returns (engine, tokenizer, model name, model-card defaults); the caller closes the engine.
    """
    from deepconf.backends.falcon_h1 import FalconH1Model, load_tokenizer

    folder = resolve_model_path(model_path)
    defaults = read_defaults(folder)
    model = FalconH1Model.from_pretrained(folder)
    limit_blas_threads(model.config)
    tokenizer = load_tokenizer(folder)
    ctx = max_len or min(model.config.max_position_embeddings, 8192)
    engine = Engine(
        model,
        _TextDecoder(tokenizer),
        max_batch=max_batch,
        max_len=ctx,
        eos_ids=set(model.config.eos_token_ids) | set(tokenizer.eos_token_ids),
    )
    name = BUNDLED_NAME if model_path is None else folder.resolve().name
    return AsyncEngine(engine), tokenizer, name, defaults


def limit_blas_threads(config: Any, threads: int | None = None) -> int | None:
    """Cap BLAS threads for small models (process-wide); returns the cap set, if any.

    A small model's matmuls are too short to split across threads: measured here on 2 busy
    cores, OpenBLAS's default 2 threads made batch-64 decoding of a 1.8M-parameter model 16x
    slower (437 vs 7,180 tokens/s) than 1 thread, the threads spinning while waiting for a
    core. Models with hidden_size > 1024 get OpenBLAS's default, a thread per core (the
    `deepconf` command loads numpy with one: deepconf/entry.py), unless the environment's
    OPENBLAS_NUM_THREADS names a count.
    """
    from threadpoolctl import threadpool_limits

    if threads is None:
        threads = 1 if config.hidden_size <= 1024 else None
    if threads is None and "OPENBLAS_NUM_THREADS" not in os.environ:
        threadpool_limits(limits=os.cpu_count() or 1, user_api="blas")
    elif threads is not None:
        threadpool_limits(limits=threads, user_api="blas")
    return threads


def render_prompt(tokenizer: Any, prompt: Prompt, system: str | None = None) -> str:
    """A str becomes one user message (after `system`, if any); a message list is used as
    given. Rendered with the checkpoint's chat template, or joined raw when it has none."""
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    if system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(messages)
    if text is not None:
        return text
    if isinstance(prompt, str):
        return prompt if not system else f"{system}\n{prompt}"
    return "\n".join(str(m.get("content", "")) for m in messages)


class BundledBackend:
    """The Backend interface over the numpy engine; see the module docstring."""

    supports_logprobs = True

    def __init__(
        self, model_path: str | Path | None = None, max_batch: int = 64, max_len: int | None = None
    ) -> None:
        self.path = resolve_model_path(model_path)
        self._model_path = model_path
        self.model = BUNDLED_NAME if model_path is None else self.path.resolve().name
        #: the model card (deepconf.json: window, tail, temperature, top_p, max_tokens, ...);
        #: its settings fill what a caller leaves unset (deepconf.model_settings)
        self.defaults: dict[str, Any] = read_defaults(self.path)
        self.max_batch = max_batch
        self.max_len = max_len
        self._engine: AsyncEngine | None = None
        self._tokenizer: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._lock:
            if self._engine is None:
                loaded = await asyncio.to_thread(
                    load_engine, self._model_path, max_batch=self.max_batch, max_len=self.max_len
                )
                self._engine, self._tokenizer, _, _ = loaded

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        await self.open()
        engine, tok = self._engine, self._tokenizer
        assert engine is not None
        # Sampling the caller left unset is the model card's, as serve-model does for a
        # request: a config built without the card still samples as the model needs.
        s = sampling_with_card(request.sampling, self.defaults)
        ids = tok.encode(render_prompt(tok, request.prompt, s.system))
        k = request.top_logprobs
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_tokens,
            seed=request.seed,
            stop=tuple(s.stop),
            logprobs=k,
        )
        generated = 0
        async for outs in engine.generate(ids, params):
            lps = np.full((len(outs), k), np.nan)  # (n, k); NaN pads k beyond the vocabulary
            for i, out in enumerate(outs):
                lps[i, : len(out.top_logprobs)] = out.top_logprobs
            generated += len(outs)
            finish = outs[-1].finish_reason
            usage = token_usage(len(ids), generated) if finish else {}
            yield TokenBatch(
                top_logprobs=lps,
                text="".join(o.text for o in outs),
                finish_reason=finish,
                usage=usage,
            )

    async def aclose(self) -> None:
        async with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)
