"""The capability probe: does a server return k top logprobs per token? One concept, no state.

Before the first trace the HTTP backend asks for a few tokens with k logprobs and judges the
fullest position: a server's cap (vLLM's --max-logprobs) is the same at every position, while
a reasoning parser may strip the logprobs of a token or two (vLLM #37737) and llama.cpp
collapses equal token strings (SmolLM2: 19 of 20 at most positions), so only the fullest
position tells the cap.

A probe must not be fooled by a short answer. Some models end at once on a greeting (the
shipped model over llama.cpp completions: P(end) ~ 1 after "Hello", and llama.cpp sends no
logprob for the end token), which used to be refused as "returned no logprobs", blaming the
server. So a probe that saw no token tries again with a prompt and settings that make any
model write; when that also yields nothing, it says so and returns None: the first traces
then judge k themselves (backends/stream_audit.py), as they do under `--no-probe`.

    served = await probe_logprobs(backend._stream, "chat", k=20, where="http://...")
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import numpy as np

from deepconf.backend import Prompt, TokenBatch, TraceRequest
from deepconf.confidence import LOGPROB_FLOOR
from deepconf.config import SamplingConfig
from deepconf.errors import CapabilityError

log = logging.getLogger(__name__)

# Tokens each probe asks for: a few, judged at the fullest position.
PROBE_TOKENS = 8

# (chat prompt, raw completions prompt, sampling): a greeting first (cheap, what every chat
# model answers), then text any model continues, at temperature 1 so an end token that is
# merely likely is not chosen every time.
_ATTEMPTS: list[tuple[str, str, SamplingConfig]] = [
    ("Say hello.", "Hello", SamplingConfig(max_tokens=PROBE_TOKENS)),
    (
        "Count from one to twenty in words, separated by commas.",
        "1, 2, 3, 4, 5, 6,",
        SamplingConfig(max_tokens=2 * PROBE_TOKENS, temperature=1.0, top_p=1.0),
    ),
]

Streamer = Callable[[TraceRequest], AsyncIterator[TokenBatch]]


async def probe_logprobs(stream: Streamer, api: str, k: int, where: str) -> int | None:
    """How many top logprobs `where` returns at its fullest position when asked for k, or
    None when the model wrote no token in any attempt (then nothing is known yet).

    Raises `CapabilityError` saying what the probe saw: text without logprobs, or only
    placeholder values."""
    for chat, raw, sampling in _ATTEMPTS:
        prompt: Prompt = [{"role": "user", "content": chat}] if api == "chat" else raw
        request = TraceRequest(index=-1, prompt=prompt, sampling=sampling, top_logprobs=k)
        rows, text = [], 0
        async with contextlib.aclosing(stream(request)) as batches:
            async for batch in batches:
                rows.append(batch.top_logprobs)
                text += len(batch.text) + len(batch.reasoning)
        lp = np.concatenate(rows) if rows else np.empty((0, k))  # (n, k)
        counts = (~np.isnan(lp)).sum(axis=1)  # (n,) entries per position
        if lp.shape[0] == 0 or counts.max() == 0:
            if text:
                raise CapabilityError(
                    f"{where}: the probe got {text} characters of text but no logprobs, and"
                    " DeepConf needs top-k logprobs per token. Use a server that returns them"
                    " (vLLM, SGLang, llama.cpp's server); OpenAI's reasoning models and some"
                    " hosted APIs return none"
                )
            continue  # the model ended at once: try a prompt that makes it write
        present = lp[~np.isnan(lp)]
        # -9999 arrives clamped to the floor (backends/sse.py sanitises at the boundary).
        if np.all((present == 0.0) | (present <= LOGPROB_FLOOR)):
            raise CapabilityError(
                f"{where} returns placeholder logprobs (every value is 0 or -9999), so"
                " confidence would be meaningless: use a server that returns real logprobs"
            )
        return int(counts.max())
    log.warning(
        "%s: the probe saw 0 tokens in %d tries (the model ended at once), so k=%d is"
        " checked on the first traces instead",
        where,
        len(_ATTEMPTS),
        k,
    )
    return None
