"""A scripted Backend for controller tests: each trace index plays a `Script`.

A script fixes a trace's per-token confidences (a constant level, a list, or explicit
logprob rows), its text, its chunking (several tokens per batch), an optional failure at
token j, its finish_reason, and optional pacing (a delay per batch, an Event to wait on).
The fake records what the controller did to it: the requests, how many tokens each stream
delivered, which streams were closed before their end, and the most streams in flight.

    fake = FakeBackend({0: Script(conf=18.0, n=40, answer="42")}, default=Script(conf=12.0))
    result = await DeepConf(fake, config).solve("q")
    assert fake.closed_early == {3}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.config import ConfidenceConfig, DeepConfConfig
from deepconf.errors import StreamError


@dataclass
class Script:
    """One trace's behaviour.

    conf: token confidence, a constant or one value per token; each row's k logprobs are
        all -conf, so token_confidence gives conf back exactly. Ignored when rows is given.
    n: tokens (when conf is a constant).
    rows: explicit (n, k) logprob rows.
    answer: put in \\boxed{} at the end of the text (None: no answer).
    text: the text before the answer.
    text_first: send the text (and so the answer) with the first batch instead of the last.
    chunks: tokens per batch, cycled (e.g. [1, 3] gives batches of 1, 3, 1, 3, ...).
    fail_at: raise StreamError (or `error`) once this many tokens were delivered.
    finish_reason: sent on the last batch.
    delay: seconds slept before each batch (0 still yields to the loop).
    gate: the stream waits for this event before its first batch.
    """

    conf: float | Sequence[float] = 15.0
    n: int = 20
    rows: np.ndarray | None = None
    answer: str | None = "42"
    text: str = "Thinking it through. "
    text_first: bool = False
    chunks: Sequence[int] = (1,)
    fail_at: int | None = None
    error: BaseException | None = None
    finish_reason: str = "stop"
    delay: float = 0.0
    gate: asyncio.Event | None = None

    def logprob_rows(self, k: int) -> np.ndarray:
        if self.rows is not None:
            return np.asarray(self.rows, dtype=np.float64)
        if np.ndim(self.conf) == 0:
            confs = np.full(self.n, float(self.conf))  # type: ignore[arg-type]
        else:
            confs = np.asarray(self.conf, dtype=np.float64)
        return np.repeat(-confs[:, None], k, axis=1)  # (n, k)

    @property
    def full_text(self) -> str:
        return self.text + (f"The answer is \\boxed{{{self.answer}}}." if self.answer else "")


@dataclass
class FakeBackend:
    """Backend protocol over scripts: `scripts[index]`, else `default(index)` / `default`."""

    scripts: dict[int, Script] = field(default_factory=dict)
    default: Script | Callable[[int], Script] | None = None
    model: str = "fake-model"
    k: int = 4
    requests: list[TraceRequest] = field(default_factory=list)
    delivered: dict[int, int] = field(default_factory=dict)  # index -> tokens yielded
    closed_early: set[int] = field(default_factory=set)  # streams closed before their end
    in_flight: int = 0
    max_in_flight: int = 0
    opened: int = 0
    closed: int = 0

    def script(self, index: int) -> Script:
        if index in self.scripts:
            return self.scripts[index]
        if callable(self.default):
            return self.default(index)
        if self.default is None:
            raise AssertionError(f"no script for trace {index}")
        return self.default

    async def open(self) -> None:
        self.opened += 1

    async def aclose(self) -> None:
        self.closed += 1

    def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        self.requests.append(request)
        return self._stream(request.index, self.script(request.index))

    async def _stream(self, index: int, script: Script) -> AsyncIterator[TokenBatch]:
        rows = script.logprob_rows(self.k)  # (n, k)
        text = script.full_text
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.delivered[index] = 0
        ended = False
        try:
            if script.gate is not None:
                await script.gate.wait()
            pos, i = 0, 0
            n = rows.shape[0]
            while pos < n:
                size = min(script.chunks[i % len(script.chunks)], n - pos)
                i += 1
                await asyncio.sleep(script.delay)
                if script.fail_at is not None and pos + size > script.fail_at:
                    ended = True  # a failure is an end, not an early close
                    raise script.error or StreamError(f"scripted failure at token {pos}")
                last = pos + size == n
                batch = TokenBatch(
                    top_logprobs=rows[pos : pos + size],
                    text=text if (pos == 0 if script.text_first else last) else "",
                    finish_reason=script.finish_reason if last else None,
                )
                pos += size
                self.delivered[index] = pos
                if last:
                    ended = True
                yield batch
        finally:
            self.in_flight -= 1
            if not ended:
                self.closed_early.add(index)


def make_config(**overrides: object) -> DeepConfConfig:
    """A small, fast config for controller tests: window 4, warm-up 4, budget 8,
    concurrency 1 (the paper's sequential run, deterministic), unless overridden.
    `window` is accepted at the top level for brevity."""
    window = int(overrides.pop("window", 4))  # type: ignore[call-overload]
    base: dict[str, object] = {"budget": 8, "warmup": 4, "concurrency": 1}
    base.update(overrides)
    base["confidence"] = ConfidenceConfig(window=window, tail=window)
    return DeepConfConfig.model_validate(base)
