"""deepconf.trace_buffers against their slow references: a ConfBuffer holds exactly what
np.concatenate of the batches gives (values, dtype, order), across every growth; a
TextBuffer's value is "".join of the pieces, across every block boundary; and what they
hold costs a few bytes per token where per-batch objects cost hundreds."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from deepconf.trace_buffers import FIRST_CAPACITY, JOIN_EVERY, ConfBuffer, TextBuffer

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
BATCHES = st.lists(st.lists(FLOATS, max_size=40), max_size=60)


@given(BATCHES)
def test_conf_buffer_equals_the_concatenated_batches(batches: list[list[float]]) -> None:
    """Any batch sizes (empty ones, ones larger than the capacity, NaN and inf values):
    after each batch the view equals np.concatenate of the batches so far, bit for bit."""
    buf, seen = ConfBuffer(), []
    for batch in batches:
        buf.extend(np.asarray(batch, dtype=np.float64))
        seen.append(np.asarray(batch, dtype=np.float64))
        want = np.concatenate(seen)
        assert buf.size == want.shape[0]
        assert buf.view().tobytes() == want.tobytes()
    final = buf.array()
    assert final.dtype == np.float64
    assert final.tobytes() == (np.concatenate(seen) if seen else np.zeros(0)).tobytes()


def test_the_array_is_its_own_and_the_view_is_not_a_copy() -> None:
    """array() survives later extends unchanged; view() shares the buffer (no copy per read)."""
    buf = ConfBuffer()
    buf.extend(np.arange(3.0))
    kept = buf.array()
    buf.extend(np.arange(FIRST_CAPACITY * 3.0))  # grows past the first capacity twice
    assert kept.tolist() == [0.0, 1.0, 2.0]
    assert np.shares_memory(buf.view(), buf.view())  # two copies would share nothing
    assert buf.view()[:3].tolist() == [0.0, 1.0, 2.0] and buf.size == 3 + FIRST_CAPACITY * 3


@given(st.lists(st.text(max_size=5), max_size=3 * JOIN_EVERY + 5))
def test_text_buffer_equals_the_joined_pieces(pieces: list[str]) -> None:
    """Pieces across block boundaries (and empty ones) give "".join of the pieces so far."""
    buf = TextBuffer()
    for i, piece in enumerate(pieces):
        buf.append(piece)
        if i % 17 == 0 or i == len(pieces) - 1:
            assert buf.value() == "".join(pieces[: i + 1])
    assert buf.value() == "".join(pieces)


def test_one_token_batches_cost_a_few_bytes_per_token() -> None:
    """32,000 one-token batches, as a GPU server sends them: the buffers hold under 24 bytes
    per token of confidences and text (per-batch arrays and strings held ~250)."""
    tokens = 32_000
    one = [np.full(1, 0.5) for _ in range(64)]
    words = [f" w{i}" for i in range(64)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        confs, text = ConfBuffer(), TextBuffer()
        for i in range(tokens):
            confs.extend(one[i % 64])
            text.append(words[i % 64])
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_token = (after - before) / tokens
    assert per_token < 24, f"{per_token:.1f} bytes per token"
    assert confs.size == tokens and len(text.value()) == sum(len(w) for w in words) * 500
