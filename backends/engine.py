"""The batched decoding engine: continuous batching, shared prefill and sampling over the numpy
Falcon-H1 model.

The engine is a synchronous core with no threads: `add_request` queues a prompt, each `step()`
admits queued requests into free cache slots, decodes one token for every running sequence in
one batched `model.decode`, samples, and returns one `StepOutput` per running request. Requests
join and leave between steps; `abort` frees a slot without touching the others. It does not
own a thread or an event loop (that is `async_engine.AsyncEngine`) and knows nothing of HTTP.

    engine = Engine(model, tokenizer, max_batch=64)
    engine.add_request("r1", tokenizer.encode("Problem: 2+3\\n"), SamplingParams(seed=0))
    while engine.has_work:
        for out in engine.step():
            print(out.request_id, repr(out.text), out.top_logprobs[:3], out.finish_reason)

N traces of one prompt share one prefill: the prompt is prefilled once into a prefix slot of
an LRU keyed by its token ids, and `model.copy_slot` forks that state into each trace's slot.
Logprobs are RAW (log-softmax of the unscaled logits, before temperature/top-p/top-k), as vLLM
returns them by default; the sampled token's own raw logprob comes with them.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deepconf.backends.sampling import (
    IncrementalDetokenizer,
    SamplingParams,
    sample_batch,
    top_logprobs,
)
from deepconf.errors import ConfigError

__all__ = ["Engine", "EngineStats", "SamplingParams", "StepOutput"]


class TokenizerLike(Protocol):
    def decode(self, ids: list[int]) -> str: ...


@dataclass(slots=True)
class StepOutput:
    """One new token of one request."""

    request_id: str
    token_id: int
    text: str  # text delta ("" while a multi-byte char is incomplete or a stop may follow)
    logprob: float  # raw logprob of the sampled token
    top_ids: np.ndarray  # (k,) int64, highest raw logprob first
    top_logprobs: np.ndarray  # (k,) float32
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length", or None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far, this one included
    stop_reason: str | None = None  # the stop string that ended it (vLLM's stop_reason)


@dataclass(slots=True)
class EngineStats:
    """Counters the server exposes at /metrics (tests read them)."""

    running: int = 0
    waiting: int = 0
    finished: int = 0
    aborted: int = 0
    tokens_generated: int = 0
    prefills: int = 0
    prefix_hits: int = 0
    steps: int = 0


@dataclass(slots=True)
class _Sequence:
    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    rng: np.random.Generator
    detok: IncrementalDetokenizer
    slot: int = -1
    next_input: int = -1  # sampled but not yet fed to the model
    generated: int = 0
    text: str = ""  # all visible text so far
    emitted: int = 0  # chars of `text` already returned
    pending_logits: np.ndarray | None = field(default=None, repr=False)  # (V,) after admit


class Engine:
    """Continuous batching over `model` (see the module docstring for the model API)."""

    def __init__(
        self,
        model: Any,
        tokenizer: TokenizerLike,
        *,
        max_batch: int = 64,
        max_len: int | None = None,
        prefix_slots: int = 4,
        eos_ids: set[int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        cfg = model.config
        self.max_len = int(max_len or getattr(cfg, "max_position_embeddings", 4096))
        self.vocab_size = int(cfg.vocab_size)
        self.eos_ids = eos_ids if eos_ids is not None else _eos_ids(cfg, tokenizer)
        self.prefix_slots = prefix_slots
        # Slots [0, max_batch) hold sequences; the rest hold shared prompt states.
        self.cache = model.allocate_cache(max_batch + prefix_slots, self.max_len)
        self._free = list(range(max_batch))  # a heap: lowest slots first keep batches contiguous
        self._prefix_free = deque(range(max_batch, max_batch + prefix_slots))
        self._prefixes: OrderedDict[tuple[int, ...], tuple[int, np.ndarray]] = OrderedDict()
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[str, _Sequence] = {}
        self.stats = EngineStats()

    # -- requests ---------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; it starts at the next step with a free slot."""
        if not prompt_ids:
            raise ConfigError("the prompt is empty: give at least one token")
        if len(prompt_ids) >= self.max_len:
            raise ConfigError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {self.max_len}; "
                "shorten the prompt"
            )
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(f"prompt token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        if request_id in self._running or any(s.request_id == request_id for s in self._waiting):
            raise ConfigError(f"request id {request_id!r} is already in use")
        seq = _Sequence(
            request_id=request_id,
            prompt=tuple(int(t) for t in prompt_ids),
            params=params,
            rng=np.random.default_rng(params.seed),
            detok=IncrementalDetokenizer(self.tokenizer),
        )
        self._waiting.append(seq)
        self.stats.waiting = len(self._waiting)

    def abort(self, request_id: str) -> bool:
        """Drop a request (queued or running) and free its slot; False if it is not known."""
        seq = self._running.pop(request_id, None)
        if seq is not None:
            self._release(seq)
        else:
            found = [s for s in self._waiting if s.request_id == request_id]
            if not found:
                return False
            self._waiting.remove(found[0])
        self.stats.aborted += 1
        self._update_counts()
        return True

    # -- stepping ---------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """Admit queued requests, decode one token per running sequence, sample, return them."""
        admitted = self._admit()
        # Sorted by slot: the model takes a contiguous run of slots as a view, not a gather.
        decoding = sorted(
            (s for s in self._running.values() if s.pending_logits is None), key=lambda s: s.slot
        )
        seqs: list[_Sequence] = []
        rows: list[np.ndarray] = []
        if decoding:
            tokens = np.fromiter((s.next_input for s in decoding), np.int64, len(decoding))
            slots = np.fromiter((s.slot for s in decoding), np.int64, len(decoding))
            rows.append(np.asarray(self.model.decode(tokens, self.cache, slots)))
            seqs.extend(decoding)
        if admitted:
            rows.append(np.stack([s.pending_logits for s in admitted]))
            seqs.extend(admitted)
            for s in admitted:
                s.pending_logits = None
        if not seqs:
            return []
        self.stats.steps += 1
        return self._sample_and_emit(seqs, np.concatenate(rows).astype(np.float32, copy=False))

    def _sample_and_emit(self, seqs: list[_Sequence], logits: np.ndarray) -> list[StepOutput]:
        k = min(max(s.params.logprobs for s in seqs), self.vocab_size)
        top_ids, top_lps, lse = top_logprobs(logits, k)  # (b, k), (b, k), (b,)
        tokens = sample_batch(
            logits,
            temperature=np.array([s.params.temperature for s in seqs], np.float64),
            top_p=np.array([s.params.top_p for s in seqs], np.float64),
            top_k=np.array([s.params.top_k or 0 for s in seqs], np.int64),
            uniforms=np.array([s.rng.random() for s in seqs]),
        )  # (b,)
        sampled_lp = logits[np.arange(len(seqs)), tokens] - lse  # (b,)
        outputs = []
        for i, seq in enumerate(seqs):
            kk = min(seq.params.logprobs, k)
            out = self._advance(seq, int(tokens[i]))
            out.logprob = float(sampled_lp[i])
            out.top_ids = top_ids[i, :kk]
            out.top_logprobs = top_lps[i, :kk]
            outputs.append(out)
        self.stats.tokens_generated += len(seqs)
        self._update_counts()
        return outputs

    def _advance(self, seq: _Sequence, token: int) -> StepOutput:
        """Record a sampled token: text delta, stop checks, and the slot release when done."""
        seq.generated += 1
        params = seq.params
        finish = None
        if token in self.eos_ids and not params.ignore_eos:
            finish = "stop"
        else:
            seq.text += seq.detok.push(token)
        if finish is None and (
            seq.generated >= params.max_tokens or len(seq.prompt) + seq.generated >= self.max_len
        ):
            finish = "length"
        if finish is not None:  # the last bytes, even an incomplete character
            seq.text += seq.detok.flush()
        matched = _cut_at_stop(seq) if params.stop else None
        if matched is not None:
            finish = "stop"
        if finish is None and params.stop:
            # Hold back what could still turn into a stop string.
            visible = max(seq.emitted, len(seq.text) - (max(map(len, params.stop)) - 1))
        else:
            visible = len(seq.text)
        delta, seq.emitted = seq.text[seq.emitted : visible], visible
        out = StepOutput(
            seq.request_id,
            token,
            delta,
            0.0,
            _EMPTY_IDS,
            _EMPTY_LPS,
            finish,
            len(seq.prompt),
            seq.generated,
            matched,
        )
        if finish is None:
            seq.next_input = token
        else:
            del self._running[seq.request_id]
            self._release(seq)
            self.stats.finished += 1
        return out

    # -- slots and shared prefill -------------------------------------------------------------

    def _admit(self) -> list[_Sequence]:
        admitted = []
        while self._waiting and self._free:
            seq = self._waiting.popleft()
            seq.slot = heapq.heappop(self._free)
            seq.pending_logits = self._prefill_into(seq.prompt, seq.slot)
            self._running[seq.request_id] = seq
            admitted.append(seq)
        return admitted

    def _prefill_into(self, prompt: tuple[int, ...], slot: int) -> np.ndarray:
        """Put `prompt`'s state into `slot` and return its last logits, reusing a cached prefill."""
        if self.prefix_slots == 0:
            self.stats.prefills += 1
            return np.asarray(self.model.prefill(np.array(prompt, np.int64), self.cache, slot))
        hit = self._prefixes.get(prompt)
        if hit is None:
            if not self._prefix_free:
                _, (old_slot, _) = self._prefixes.popitem(last=False)  # evict the oldest
                self.model.reset_slot(self.cache, old_slot)
                self._prefix_free.append(old_slot)
            pslot = self._prefix_free.popleft()
            logits = np.asarray(self.model.prefill(np.array(prompt, np.int64), self.cache, pslot))
            hit = self._prefixes[prompt] = (pslot, logits.astype(np.float32, copy=True))
            self.stats.prefills += 1
        else:
            self._prefixes.move_to_end(prompt)
            self.stats.prefix_hits += 1
        self.model.copy_slot(self.cache, hit[0], slot)
        return hit[1]

    def _release(self, seq: _Sequence) -> None:
        self.model.reset_slot(self.cache, seq.slot)
        heapq.heappush(self._free, seq.slot)
        seq.slot = -1

    def _update_counts(self) -> None:
        self.stats.running = len(self._running)
        self.stats.waiting = len(self._waiting)


_EMPTY_IDS = np.zeros(0, np.int64)
_EMPTY_LPS = np.zeros(0, np.float32)


def _cut_at_stop(seq: _Sequence) -> str | None:
    """Truncate `seq.text` before the first stop string; returns the one found, if any."""
    longest = max(map(len, seq.params.stop))
    start = max(0, seq.emitted - longest + 1)
    hits = [(i, s) for s in seq.params.stop if (i := seq.text.find(s, start)) >= 0]
    if not hits:
        return None
    at, stop = min(hits)
    seq.text = seq.text[:at]
    seq.emitted = min(seq.emitted, len(seq.text))
    return stop


def _eos_ids(cfg: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    sources = ("eos_token_ids", "eos_token_id")
    for value in [getattr(obj, name, None) for obj in (cfg, tokenizer) for name in sources]:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple | set):
            ids.update(int(v) for v in value)
    return ids
