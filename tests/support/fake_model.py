"""A deterministic stand-in for the numpy Falcon-H1 model, for engine unit tests.

It implements the model API the engine builds on (allocate_cache, prefill, decode, copy_slot,
reset_slot, cache.lengths, config.vocab_size/eos_token_id/max_position_embeddings). Each slot's
logits are a fixed random row picked by a hash of that slot's whole token history, so a slot
that got someone else's state, or a token fed twice, produces different logits: batching bugs
show up as changed outputs. `FakeTokenizer` maps ids to raw bytes (some of them halves of
multi-byte UTF-8 characters) and decodes like a byte-level tokenizer, U+FFFD included.

    model, tok = FakeModel(), FakeTokenizer()
    engine = Engine(model, tok, max_batch=4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MOD = (1 << 61) - 1

# id -> bytes: 0 pad, 1 eos, then ASCII letters/space/punctuation, then UTF-8 fragments
# ("é" = C3 A9, "€" = E2 82 AC) so incremental decoding must hold back partial characters.
PIECES: list[bytes] = [b"", b"", *(bytes([c]) for c in b"abcdefghij .,+=0123456789\n")]
PIECES += [b"\xc3", b"\xa9", b"\xe2", b"\x82\xac", b"\xc3\xa9", b"ab", b"STOP"]


@dataclass
class FakeConfig:
    vocab_size: int
    eos_token_id: int = 1
    max_position_embeddings: int = 256


class FakeCache:
    def __init__(self, n_slots: int, max_len: int) -> None:
        self.lengths = np.zeros(n_slots, np.int64)
        self.hashes = [0] * n_slots
        self.max_len = max_len


class FakeModel:
    """Logits = table[hash(history) % rows] (+ an EOS bias); counts prefills and decodes."""

    def __init__(self, vocab_size: int = len(PIECES), *, seed: int = 0, eos_bias: float = -2.0):
        rng = np.random.default_rng(seed)
        self.config = FakeConfig(vocab_size=vocab_size)
        self.table = (rng.normal(size=(509, vocab_size)) * 2.0).astype(np.float32)
        self.table[:, self.config.eos_token_id] += eos_bias
        self.table[:, 0] = -30.0  # pad is (almost) never sampled
        self.prefill_calls = 0
        self.decode_calls: list[int] = []  # batch size of each decode

    def allocate_cache(self, n_slots: int, max_len: int) -> FakeCache:
        return FakeCache(n_slots, max_len)

    def _logits(self, h: int) -> np.ndarray:
        return self.table[h % len(self.table)].copy()

    def prefill(self, input_ids: np.ndarray, cache: FakeCache, slot: int) -> np.ndarray:
        assert cache.lengths[slot] == 0, "prefill into a slot that was not reset"
        assert len(input_ids) <= cache.max_len
        self.prefill_calls += 1
        h = 0
        for t in input_ids.tolist():
            h = (h * 1_000_003 + t + 1) % _MOD
        cache.hashes[slot] = h
        cache.lengths[slot] = len(input_ids)
        return self._logits(h)

    def decode(self, tokens: np.ndarray, cache: FakeCache, slots: np.ndarray) -> np.ndarray:
        assert len(set(slots.tolist())) == len(slots), "a slot decoded twice in one batch"
        self.decode_calls.append(len(tokens))
        out = np.empty((len(tokens), self.config.vocab_size), np.float32)
        for i, (t, s) in enumerate(zip(tokens.tolist(), slots.tolist(), strict=True)):
            assert 0 < cache.lengths[s] < cache.max_len, f"slot {s} is empty or full"
            cache.hashes[s] = (cache.hashes[s] * 1_000_003 + t + 1) % _MOD
            cache.lengths[s] += 1
            out[i] = self._logits(cache.hashes[s])
        return out

    def copy_slot(self, cache: FakeCache, src: int, dst: int) -> None:
        cache.hashes[dst] = cache.hashes[src]
        cache.lengths[dst] = cache.lengths[src]

    def reset_slot(self, cache: FakeCache, slot: int) -> None:
        cache.hashes[slot] = 0
        cache.lengths[slot] = 0


class FakeTokenizer:
    """Byte-piece tokenizer over `PIECES`; decode replaces broken UTF-8 with U+FFFD."""

    eos_token_id = 1

    def decode(self, ids: list[int]) -> str:
        return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")

    def encode(self, text: str) -> list[int]:
        index = {p: i for i, p in enumerate(PIECES) if len(p) == 1}
        return [index[bytes([b])] for b in text.encode()]
