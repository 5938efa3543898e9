"""SSE framing and chunk decoding: the fast msgspec path against the json reference."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.backends.sse import (
    SSEDecoder,
    decode_payloads,
    decode_payloads_reference,
    top_k_matrix,
)
from deepconf.errors import StreamError


def chat_chunk(tokens: list[tuple[str, list[float]]], *, reasoning: bool = False, **choice):
    entries = [
        {
            "token": t,
            "logprob": tops[0] if tops else None,
            "bytes": list(t.encode()),
            "top_logprobs": [
                {"token": f"a{j}", "logprob": v, "bytes": [97]} for j, v in enumerate(tops)
            ],
        }
        for t, tops in tokens
    ]
    text = "".join(t for t, _ in tokens)
    delta = {"reasoning_content" if reasoning else "content": text}
    body = {"index": 0, "delta": delta, "logprobs": {"content": entries}, "finish_reason": None}
    body.update(choice)
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [body]}


def completion_chunk(tokens: list[tuple[str, dict[str, float]]], **choice):
    lp = {
        "text_offset": [0] * len(tokens),
        "token_logprobs": [next(iter(d.values()), None) for _, d in tokens],
        "tokens": [t for t, _ in tokens],
        "top_logprobs": [d for _, d in tokens],
    }
    body = {"index": 0, "text": "".join(t for t, _ in tokens), "logprobs": lp}
    body.update({"finish_reason": None, "stop_reason": None, **choice})
    return {"id": "c", "object": "text_completion", "choices": [body], "usage": None}


def sse(*objs) -> bytes:
    return b"".join(
        b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs
    )


def assert_same(a, b):
    np.testing.assert_array_equal(a.top_logprobs, b.top_logprobs)
    assert (a.text, a.reasoning, a.finish_reason, a.usage, a.done) == (
        b.text,
        b.reasoning,
        b.finish_reason,
        b.usage,
        b.done,
    )


# --- framing -----------------------------------------------------------------------------------

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"x": "caf\xc3\xa9 \xf0\x9f\x98\x80"}\n\n'  # 2- and 4-byte UTF-8 characters
    b"event: message\r\nid: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\r\rdata: [DONE]\n\n"
)
EXPECTED = [
    '{"x": "café 😀"}'.encode(),
    b"line one\nline two",
    b"no-space",
    b"[DONE]",
]


def test_framing_whole_stream():
    """One read gives every payload: comments and non-data fields dropped, multi-line data
    joined with LF, LF/CRLF/CR line ends all accepted."""
    assert SSEDecoder().feed(STREAM) == EXPECTED


def test_framing_every_two_way_split():
    """Splitting the bytes at ANY point (mid-line, mid-CRLF, mid-UTF-8 character) yields the
    same payloads: the decoder never decodes or dispatches a partial line."""
    for cut in range(1, len(STREAM)):
        dec = SSEDecoder()
        assert dec.feed(STREAM[:cut]) + dec.feed(STREAM[cut:]) == EXPECTED, cut


def test_framing_byte_at_a_time():
    """A stream fed one byte per read still yields every payload, in order."""
    dec = SSEDecoder()
    out = [p for i in range(len(STREAM)) for p in dec.feed(STREAM[i : i + 1])]
    assert out == EXPECTED


@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=8))
@settings(max_examples=60, deadline=None)
def test_framing_random_splits(cuts):
    """Any partition of the stream into reads gives the same payloads."""
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    dec = SSEDecoder()
    out = [p for a, b in itertools.pairwise(bounds) for p in dec.feed(STREAM[a:b])]
    assert out == EXPECTED


def test_flush_returns_unterminated_event():
    """A last event without its blank line (server closed early) is still delivered."""
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}') == []
    assert dec.flush() == [b'{"a": 1}']
    assert dec.flush() == []


# --- chunk decoding ----------------------------------------------------------------------------

K = 4
TOPS = [-0.1, -2.0, -3.5, -4.0]


def test_chat_multi_token_chunk_counts_tokens_not_chunks():
    """A chunk carrying 3 tokens gives 3 rows; the text of the chunk is kept whole."""
    payloads = [json.dumps(chat_chunk([("a", TOPS), ("b", TOPS), ("c", TOPS)])).encode()]
    out = decode_payloads(payloads, K)
    assert out.top_logprobs.shape == (3, K)
    assert out.text == "abc"
    assert_same(out, decode_payloads_reference(payloads, K))


def test_chat_sampled_first_is_sorted_largest_first():
    """vLLM puts the sampled token first even when it ranks below the others: rows come
    back sorted, largest first."""
    payloads = [json.dumps(chat_chunk([("z", [-5.0, -0.2, -1.0, -3.0])])).encode()]
    out = decode_payloads(payloads, K)
    assert out.top_logprobs.tolist() == [[-0.2, -1.0, -3.0, -5.0]]


def test_llamacpp_appended_sampled_token_is_not_counted_twice():
    """llama.cpp appends the sampled token (already in the top k) as entry k+1; the row is
    the k distinct entries, not the sampled value twice."""
    payloads = [json.dumps(chat_chunk([("t", [*TOPS, TOPS[1]])])).encode()]
    out = decode_payloads(payloads, K)
    assert out.top_logprobs.tolist() == [TOPS]
    assert_same(out, decode_payloads_reference(payloads, K))


def test_completions_k_plus_one_dict_keeps_k_largest():
    """A completions dict with k+1 entries (sampled token outside the top k) gives the k
    largest values; a dict that lost entries to string collapse is NaN-padded."""
    full = {"s": -9.0, "a": -0.1, "b": -2.0, "c": -3.5, "d": -4.0}
    collapsed = {"a": -0.1, "b": -2.0}
    payloads = [json.dumps(completion_chunk([(" x", full), (" y", collapsed)])).encode()]
    out = decode_payloads(payloads, K)
    assert out.top_logprobs[0].tolist() == TOPS
    assert out.top_logprobs[1, :2].tolist() == [-0.1, -2.0]
    assert np.isnan(out.top_logprobs[1, 2:]).all()
    assert out.text == " x y"
    assert_same(out, decode_payloads_reference(payloads, K))


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_fields(field):
    """Reasoning text arrives in delta.reasoning_content (vLLM) or delta.reasoning (newer)."""
    chunk = chat_chunk([("hm", TOPS)])
    chunk["choices"][0]["delta"] = {field: "hm", "content": None}
    out = decode_payloads([json.dumps(chunk).encode()], K)
    assert (out.reasoning, out.text, out.top_logprobs.shape[0]) == ("hm", "", 1)


def test_role_chunk_usage_chunk_nulls_and_done():
    """The role-only first chunk adds nothing; nulls are tolerated; usage is read from the
    choices-less chunk; [DONE] stops decoding (later payloads are ignored)."""
    role = {"choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None}]}
    last = chat_chunk([("!", [-0.5, None, -2.0])], finish_reason="stop")
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "x": None}}
    payloads = [json.dumps(o).encode() for o in (role, last, usage)] + [
        b"[DONE]",
        b'{"choices": [{"delta": {"content": "late"}}]}',
    ]
    out = decode_payloads(payloads, K)
    assert out.done and out.finish_reason == "stop" and out.text == "!"
    assert out.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert out.top_logprobs[0, :2].tolist() == [-0.5, -2.0]  # null counts as missing
    assert np.isnan(out.top_logprobs[0, 2:]).all()
    assert_same(out, decode_payloads_reference(payloads, K))


@pytest.mark.parametrize(
    "obj",
    [
        {"error": {"message": "boom happened", "type": "InternalServerError", "code": 500}},
        {"error": "boom happened"},
        {"object": "error", "message": "boom happened", "type": "BadRequestError", "code": 400},
    ],
)
def test_in_stream_error_raises(obj):
    """An error object inside the stream (three shapes seen in the wild) is a StreamError
    quoting the server, in both the fast path and the reference."""
    payloads = [json.dumps(chat_chunk([("a", TOPS)])).encode(), json.dumps(obj).encode()]
    for decode in (decode_payloads, decode_payloads_reference):
        with pytest.raises(StreamError, match="boom happened"):
            decode(payloads, K)


def test_unreadable_payload_raises():
    """A payload that is not JSON is a StreamError showing the bytes, not a crash."""
    with pytest.raises(StreamError, match="unreadable"):
        decode_payloads([json.dumps(chat_chunk([("a", TOPS)])).encode(), b"{not json"], K)


def test_top_k_matrix_pads_and_truncates():
    """Rows longer than k keep their k largest; shorter rows are NaN-padded; empty -> (0, k)."""
    m = top_k_matrix([[-3.0, -1.0, -2.0], [-1.0]], 2)
    assert m[0].tolist() == [-1.0, -2.0]
    assert m[1, 0] == -1.0 and math.isnan(m[1, 1])
    assert top_k_matrix([], 3).shape == (0, 3)


logprob = st.one_of(st.floats(-30, 0, allow_nan=False), st.just(-9999.0), st.none())


@st.composite
def random_chunks(draw):
    k = draw(st.integers(1, 6))
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 3))
        rows = [draw(st.lists(logprob, max_size=k + 1)) for _ in range(n)]
        if draw(st.booleans()):
            toks = [(f"t{i}", r) for i, r in enumerate(rows)]
            c = chat_chunk(toks, reasoning=draw(st.booleans()))
        else:
            toks = [(f" w{i}", {f"k{j}": v for j, v in enumerate(r)}) for i, r in enumerate(rows)]
            c = completion_chunk(toks)
        if draw(st.booleans()):
            c["choices"][0]["finish_reason"] = draw(st.sampled_from(["stop", "length"]))
        chunks.append(json.dumps(c).encode())
    return k, chunks


@given(random_chunks())
@settings(max_examples=150, deadline=None)
def test_fast_decoder_matches_reference(case):
    """On random chat/completions chunks (nulls, -9999, short and k+1 rows) the msgspec
    fast path and the json reference agree exactly."""
    k, payloads = case
    assert_same(decode_payloads(payloads, k), decode_payloads_reference(payloads, k))
