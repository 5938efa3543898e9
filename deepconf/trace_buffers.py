"""What a trace holds while it streams: its per-token confidences and its text, in buffers
whose memory is a few bytes per token however the tokens arrive.

A GPU server sends one token per SSE event, so a trace of 32,000 tokens arrives as 32,000
batches. Kept as they came (a list of one-element arrays, a list of one-token strings), that
cost ~250 bytes per token (a numpy array header is ~100 B, a str ~50 B, plus the list's
pointers): 512 traces x 32,000 tokens in flight would hold ~4 GB. Here:

- `ConfBuffer`: one float64 array grown by doubling: 8-16 bytes per token, one copy of
  each value per doubling (amortised O(1) per token). float64, as every confidence is
  computed and stored: the trace file and the vote see exactly the values they saw before.
- `TextBuffer`: pieces are joined into one string per `JOIN_EVERY` of them, so a trace
  holds ~1 byte per character plus one str per block, and each character is copied twice
  in all (into its block, then into the whole text).

The slow references they equal (tests/test_trace_buffers.py): `np.concatenate` of the
batches and `"".join` of the pieces.

    confs, text = ConfBuffer(), TextBuffer()
    confs.extend(token_confidence(batch.top_logprobs))   # (n,)
    text.append(batch.text)
    confs.view()[-window:]     # the last `window` confidences, no copy
    record_confs, record_text = confs.array(), text.value()
"""

from __future__ import annotations

import numpy as np

FIRST_CAPACITY = 256  # tokens; most traces are longer, and 2 KiB per trace is nothing
JOIN_EVERY = 64  # pieces per joined block


class ConfBuffer:
    """Per-token confidences appended batch by batch; see the module docstring."""

    __slots__ = ("_data", "size")

    def __init__(self) -> None:
        self._data = np.empty(FIRST_CAPACITY, dtype=np.float64)
        self.size = 0

    def extend(self, confs: np.ndarray) -> None:
        """Append one batch's confidences, (n,)."""
        end = self.size + confs.shape[0]
        if end > self._data.shape[0]:
            grown = np.empty(max(end, 2 * self._data.shape[0]), dtype=np.float64)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = confs
        self.size = end

    def view(self) -> np.ndarray:
        """The confidences so far, (size,): a view, valid until the next extend()."""
        return self._data[: self.size]

    def array(self) -> np.ndarray:
        """The confidences so far as an array of their own (no spare capacity kept)."""
        return self._data[: self.size].copy()


class TextBuffer:
    """Text appended piece by piece; see the module docstring."""

    __slots__ = ("_blocks", "_pieces")

    def __init__(self) -> None:
        self._blocks: list[str] = []  # joined blocks of JOIN_EVERY pieces each
        self._pieces: list[str] = []  # the pieces since the last block

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) == JOIN_EVERY:
            self._blocks.append("".join(self._pieces))
            self._pieces.clear()

    def value(self) -> str:
        """The whole text so far."""
        return "".join(self._blocks) + "".join(self._pieces)
