"""SSE framing and chunk decoding: the fast paths (C, msgspec) against the json reference."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.backends import sse as sse_module
from deepconf.backends import sse_framing
from deepconf.backends.sse import decode_payloads, decode_payloads_reference, top_k_matrix
from deepconf.backends.sse_framing import (
    DEFAULT_MAX_EVENT_BYTES,
    SSEDecoder,
    sse_events_reference,
)
from deepconf.errors import ConfigError, StreamError


@pytest.fixture(autouse=True, params=["c", "msgspec"])
def decoder_path(request):
    """Every test here runs with the C fast paths (backends/_chunkscan.c, _framing.c) and in
    Python alone (an install without a C compiler): both must equal the json reference."""
    saved = sse_module._chunkscan, sse_framing._framing
    if request.param == "msgspec":
        sse_module._chunkscan = sse_framing._framing = None
    elif None in saved:
        pytest.skip("the C part was not built (no C compiler)")
    yield
    sse_module._chunkscan, sse_framing._framing = saved


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
    fields = ("text", "reasoning", "finish_reason", "usage", "done", "empty_rows", "unscored")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


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


# --- framing against the reference; the size limit --------------------------------------------


def feed_all(dec: SSEDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    """Every payload of `stream` read in pieces cut at `cuts`, then flushed."""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [p for a, b in itertools.pairwise(bounds) for p in dec.feed(stream[a:b])] + dec.flush()


def test_reference_frames_the_fixed_stream():
    assert sse_events_reference(STREAM) == EXPECTED


_value = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=6)
_line = st.one_of(
    st.just(b""),  # ends an event
    _value.map(lambda v: b"data: " + v.encode()),
    _value.map(lambda v: b"data:" + v.encode()),
    _value.map(lambda v: b":" + v.encode()),  # a comment
    st.sampled_from([b"event: message", b"id: 7", b"retry: 10", b"data", b"Data: x", b"data :x"]),
    st.integers(100, 3000).map(lambda n: b"data: " + b"x" * n),  # spans many reads
)


@st.composite
def event_streams(draw):
    """A stream of arbitrary lines, each ended by LF, CR or CRLF, maybe with an unterminated
    last line, and the points where the network cuts it into reads."""
    lines = draw(st.lists(_line, max_size=16))
    ends = draw(st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]), min_size=len(lines)))
    stream = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    stream += draw(st.sampled_from([b"", b"data: tail", b": tail", b"\r"]))
    return stream, draw(st.lists(st.integers(0, len(stream)), max_size=12))


@given(event_streams())
@settings(max_examples=300, deadline=None)
def test_decoder_matches_reference_on_any_stream_and_split(case):
    """Whatever the lines, line ends and read split (mid-CRLF, mid-UTF-8 character, a long
    line over many reads), the incremental decoder gives exactly the reference's payloads."""
    stream, cuts = case
    assert feed_all(SSEDecoder(), stream, cuts) == sse_events_reference(stream)


@st.composite
def server_streams(draw):
    """What vLLM and SGLang send: events of one data line (some of several), each ended by a
    blank line, cut into reads mostly at line ends, where the decoder's one-step path for
    whole events applies, and sometimes anywhere."""
    data = _value.map(lambda v: b"data: " + v.encode())
    events = draw(st.lists(st.lists(data, min_size=1, max_size=3), max_size=10))
    stream, line_ends = b"", []
    for line in (line for event in events for line in (*event, b"")):
        stream += line + b"\n"
        line_ends.append(len(stream))
    anywhere = st.integers(0, len(stream))
    cut = st.sampled_from(line_ends) if line_ends else anywhere
    return stream, draw(st.lists(st.one_of(cut, cut, cut, anywhere), max_size=10))


@given(server_streams())
@settings(max_examples=300, deadline=None)
def test_decoder_matches_reference_on_server_shaped_streams(case):
    """The shape real servers send, read at line ends: a read that holds whole events takes
    one step per event, and an event of several data lines, or one a read leaves open, is
    still framed exactly as the reference frames it."""
    stream, cuts = case
    assert feed_all(SSEDecoder(), stream, cuts) == sse_events_reference(stream)


def test_an_event_of_two_data_lines_split_after_its_first_line():
    """A read that ends after an event's first data line leaves the event open; the rest of
    it comes in the next read (joined with LF), and whole events around it are not merged."""
    dec = SSEDecoder()
    assert dec.feed(b"data: x\n\ndata: a\n") == [b"x"]
    assert dec.feed(b"data: b\n\ndata: y\n\n") == [b"a\nb", b"y"]
    assert dec.feed(b"data: a\n\ndata: b\ndata: c\n") == [b"a"]
    assert dec.feed(b"\n") == [b"b\nc"]


@given(event_streams(), st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_limit_matches_reference(case, limit):
    """With a small limit the decoder raises exactly when the reference does (some line, or
    one event's data, is longer than the limit), whatever the read split; else they agree."""
    stream, cuts = case
    try:
        expected = sse_events_reference(stream, limit)
    except StreamError:
        with pytest.raises(StreamError):
            feed_all(SSEDecoder(limit), stream, cuts)
    else:
        assert feed_all(SSEDecoder(limit), stream, cuts) == expected


@pytest.mark.parametrize("start", [b"data: ", b"<html>", b": "])
def test_never_ending_line_raises_at_the_default_limit(start):
    """A server that never sends a line end is stopped at the read that crosses 16 MiB, not
    when the stream ends, and the message says what to do."""
    dec, fed, mib = SSEDecoder(), 0, b"x" * 2**20
    with pytest.raises(StreamError, match=r"16\.0 MiB.*--max-event-mb") as err:
        dec.feed(start)
        for fed in range(1, 40):  # noqa: B007 (read after the loop)
            dec.feed(mib)
    assert fed == 16 and "a line of 16.0 MiB" in str(err.value)
    assert DEFAULT_MAX_EVENT_BYTES == 16 * 2**20


def test_one_huge_event_of_many_data_lines_raises():
    """Short data lines that never end their event (no blank line) are stopped once the
    event's data passes the limit."""
    dec, reads = SSEDecoder(), 0
    read = (b"data: " + b"x" * 1017 + b"\n") * 64  # 64 KiB: 64 lines of 1 KiB data each
    with pytest.raises(StreamError, match=r"one event of 16\.0 MiB"):
        for reads in range(1, 400):  # noqa: B007 (read after the loop)
            dec.feed(read)
    assert reads == 16 * 2**20 // (1018 * 64) + 1


def test_limit_is_settable():
    """A line of exactly the limit passes, and so does an event whose data (two lines joined)
    is exactly the limit, twice in a row (the limit is per event), in one read or many; one
    byte more raises, whether one event's data or a line of any kind; a limit below 1 is
    refused."""
    limit = 1000
    line = b"data: " + b"a" * (limit - 6) + b"\n\n"
    event = b"data: " + b"a" * 499 + b"\r\ndata: " + b"b" * 500 + b"\r\n\r\n"
    for stream, size in ((line * 2, limit - 6), (event * 2, limit)):
        for read in (len(stream), 7, 1):
            dec = SSEDecoder(max_event_bytes=limit)
            payloads = feed_all(dec, stream, [*range(0, len(stream), read)])
            assert [len(p) for p in payloads] == [size, size]
    too_long = (
        b"data: " + b"a" * (limit - 5) + b"\n\n",  # a line
        b":" + b"c" * limit + b"\n\n",  # a comment line
        event.replace(b"b" * 500, b"b" * 501),  # one event's data
    )
    for stream in too_long:
        with pytest.raises(StreamError, match=r"1,001 bytes or more, past the limit of 1,000"):
            SSEDecoder(limit).feed(stream)
    with pytest.raises(ConfigError, match="at least 1"):
        SSEDecoder(0)


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


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of backends/sse.py that every test above let through.


def test_a_read_of_many_tokens_without_logprob_entries_has_as_many_empty_rows():
    """Nine tokens with empty top_logprobs in one read (past the read size where numpy
    checks the rows): nine all-NaN rows, counted as empty, exactly as the reference."""
    payloads = [json.dumps(chat_chunk([("t", [])] * 9)).encode()]
    fast = decode_payloads(payloads, K)
    assert fast.top_logprobs.shape == (9, K) and np.isnan(fast.top_logprobs).all()
    assert fast.empty_rows == 9
    assert_same(fast, decode_payloads_reference(payloads, K))


@pytest.mark.parametrize("n", [2, 9], ids=["few-rows", "many-rows"])
def test_a_positive_logprob_in_full_rows_is_clamped_to_zero(n):
    """A logprob above 0 (0.5: a server bug or rounding) is clamped to 0 whether the read is
    checked row by row (a few tokens) or by numpy (many), and nothing else moves."""
    tops = [[-0.1 * (j + 1) for j in range(K)] for _ in range(n)]
    tops[1][2] = 0.5
    payloads = [json.dumps(chat_chunk([("t", row) for row in tops])).encode()]
    fast = decode_payloads(payloads, K)
    assert fast.top_logprobs[1].tolist() == [0.0, *[-0.1 * (j + 1) for j in range(K) if j != 2]]
    assert fast.top_logprobs[0].tolist() == tops[0]
    assert_same(fast, decode_payloads_reference(payloads, K))


@pytest.mark.parametrize(
    ("obj", "said"),
    [
        ({"error": {"code": 500}}, "unspecified error"),
        ({"error": {"type": "InternalServerError"}}, "InternalServerError"),
        ({"object": "error", "code": 400}, "unspecified error"),
    ],
)
def test_an_error_object_without_a_message_still_fails_the_stream(obj, said):
    """An in-stream error with no message is still an error: the trace fails, quoting what
    the server did say (its type), else 'unspecified error'. Never skipped as a no-op chunk."""
    with pytest.raises(StreamError) as info:
        decode_payloads([json.dumps(obj).encode()], K)
    assert str(info.value) == f"the server reported an error mid-stream: {said}"


def nan_chunk(n_before: int, *, completions: bool = False) -> dict:
    """One chunk of n_before good tokens, then a token with NaN among its top logprobs."""
    if completions:
        tokens = [(" ok", {"a": -0.1})] * n_before + [(" bad", {"a": -0.1, "b": math.nan})]
        return completion_chunk(tokens)
    return chat_chunk([("ok", [-0.1])] * n_before + [("bad", [-0.1, math.nan])])


@pytest.mark.parametrize("completions", [False, True], ids=["chat", "completions"])
def test_nan_in_a_read_of_several_payloads_names_its_absolute_token(completions):
    """In a read of several payloads, one of them with a NaN literal (not JSON: decoded one
    by one), the message names the token counted over the stream: 10 before this read, 2 in
    an earlier payload of it (role and other-choice chunks count none), then the NaN's
    position in its own chunk (2nd)."""
    role = {"choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None}]}
    other = chat_chunk([("x", TOPS)] * 3, index=1)  # another choice: never counted (n=1)
    earlier = chat_chunk([("a", TOPS), ("b", TOPS)])
    if completions:
        earlier = completion_chunk([(" a", {"a": -0.1}), (" b", {"a": -0.2})])
    payloads = [json.dumps(o).encode() for o in (role, other, earlier)]
    payloads.append(json.dumps(nan_chunk(1, completions=completions)).encode())
    with pytest.raises(StreamError, match="NaN as a logprob at token 14:"):
        decode_payloads(payloads, K, offset=10)


def test_nan_is_looked_for_in_choice_zero_only_and_past_other_choices():
    """The NaN check reads choice 0, as decoding does: a NaN in another choice (which n=1
    never produces) is ignored, and a choice listed before choice 0 does not hide choice 0's
    NaN."""
    good = chat_chunk([("a", TOPS)])["choices"][0]
    bad = nan_chunk(0)["choices"][0]
    only_other_bad = {"choices": [{**bad, "index": 1}, good]}
    out = decode_payloads([json.dumps(only_other_bad).encode()], K)
    assert out.top_logprobs.tolist() == [TOPS]
    zero_bad = {"choices": [{**good, "index": 1}, bad]}
    with pytest.raises(StreamError, match="NaN as a logprob at token 1:"):
        decode_payloads([json.dumps(zero_bad).encode()], K)
    no_logprobs = {"choices": [{"index": 0, "text": "a", "logprobs": None}], "x": math.nan}
    assert decode_payloads([json.dumps(no_logprobs).encode()], K).unscored == "a"


def test_sizes_in_messages_switch_to_mib_at_exactly_one_mib():
    """The limit message says what was seen and the limit, in bytes below 1 MiB and in MiB
    from 1 MiB on, then what to do about it, word for word."""
    for limit, shown in ((2**20, "1.0 MiB"), (2**20 - 1, "1,048,575 bytes")):
        with pytest.raises(StreamError) as info:
            SSEDecoder(limit).feed(b"x" * (limit + 1))
        seen = "1.0 MiB" if limit + 1 >= 2**20 else f"{limit + 1:,} bytes"
        assert str(info.value) == (
            f"the server sent a line of {seen} or more, past the limit of {shown} per event:"
            " not an event stream, or events larger than expected; raise --max-event-mb if the"
            " server really sends events that large"
        )
    with pytest.raises(StreamError, match=r"a line of 1\.5 MiB or more, past the limit of 1\.0 M"):
        SSEDecoder(2**20).feed(b"x" * (3 * 2**19))


def test_done_alone_in_a_read_is_seen():
    """A read that carries only `data: [DONE]` (or [DONE] and anything after it) reports
    done, with nothing decoded: the stream ended properly."""
    for payloads in ([b"[DONE]"], [b"[DONE]", json.dumps(chat_chunk([("a", TOPS)])).encode()]):
        out = decode_payloads(payloads, K)
        assert out.done is True and out.top_logprobs.shape == (0, K) and out.text == ""


def test_k_of_one_is_a_logprob_per_position_not_an_empty_row():
    """--top-logprobs 1: one entry per position is all that was asked, and no row is empty."""
    payloads = [json.dumps(chat_chunk([("a", [-0.5]), ("b", [-0.1])])).encode()]
    out = decode_payloads(payloads, 1)
    assert out.top_logprobs.tolist() == [[-0.5], [-0.1]] and out.empty_rows == 0
    missing = [json.dumps(chat_chunk([("a", [-0.5]), ("b", [])])).encode()]
    assert decode_payloads(missing, 1).empty_rows == 1


def test_an_unreadable_payload_is_quoted_up_to_200_characters_whatever_its_bytes():
    """The message shows the payload's start, invalid UTF-8 replaced, never more than 200
    characters."""
    with pytest.raises(StreamError) as info:
        decode_payloads([b"\xff\xfe{not json"], K)
    assert re.fullmatch(
        r"the server sent an unreadable stream chunk \(.+\): '\ufffd\ufffd\{not json'",
        str(info.value),
    )
    with pytest.raises(StreamError) as info:
        decode_payloads([b"{" + b"x" * 300], K)
    assert str(info.value).endswith(": '{" + "x" * 199 + "'")


def test_a_nan_message_says_the_trace_cannot_be_scored():
    """Word for word, the token counted from the stream's start (no offset given: 1)."""
    with pytest.raises(StreamError) as info:
        decode_payloads([json.dumps(nan_chunk(0)).encode()], K)
    assert str(info.value) == (
        "the server sent NaN as a logprob at token 1: its logprobs are broken, so this trace"
        " cannot be scored"
    )


def test_positions_without_top_logprobs_are_empty_rows_not_crashes():
    """A chat token whose top_logprobs is null, a completions position that is null, and
    completions that send only token_logprobs (no top list) each give one empty row, which
    empty_rows counts (the audit then fails the trace); nothing is dropped or raised."""
    chat = chat_chunk([("a", TOPS), ("b", TOPS)])
    chat["choices"][0]["logprobs"]["content"][1]["top_logprobs"] = None
    comp = completion_chunk([(" a", {"x": -0.1}), (" b", {"x": -0.2})])
    comp["choices"][0]["logprobs"]["top_logprobs"][0] = None
    only_sampled = completion_chunk([(" a", {}), (" b", {})])
    only_sampled["choices"][0]["logprobs"]["top_logprobs"] = None
    only_sampled["choices"][0]["logprobs"]["token_logprobs"] = [-0.1, -0.2]
    for chunk, empty in ((chat, 1), (comp, 1), (only_sampled, 2)):
        out = decode_payloads([json.dumps(chunk).encode()], K)
        assert (out.top_logprobs.shape[0], out.empty_rows, out.unscored) == (2, empty, None)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_text_that_came_without_any_logprob_is_reported_as_unscored(api):
    """The first text of a choice that carried no logprob entry at all is `unscored`: in
    chat the content (or reasoning), in completions the text; text with logprobs is not."""
    if api == "chat":
        bare = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": None}]}
        thinking = {"choices": [{"index": 0, "delta": {"reasoning_content": "Hm"}}]}
    else:
        bare = {"choices": [{"index": 0, "text": "Hi", "logprobs": None}]}
        thinking = {"choices": [{"index": 0, "text": "Hm", "logprobs": None}]}
    scored = json.dumps(chat_chunk([("ok", TOPS)])).encode()
    out = decode_payloads([scored, json.dumps(bare).encode(), json.dumps(thinking).encode()], K)
    assert out.unscored == "Hi"
    only_thinking = decode_payloads([json.dumps(thinking).encode()], K)
    assert only_thinking.unscored == "Hm"
    assert decode_payloads([scored], K).unscored is None


def test_choice_zero_is_read_wherever_it_is_listed():
    """Other choices are skipped, not a reason to stop reading the chunk."""
    other = {**chat_chunk([("x", TOPS)])["choices"][0], "index": 1}
    chunk = {"choices": [other, chat_chunk([("a", TOPS), ("b", TOPS)])["choices"][0]]}
    out = decode_payloads([json.dumps(chunk).encode()], K)
    assert (out.top_logprobs.shape[0], out.text) == (2, "ab")


def test_every_too_long_line_is_named_a_line_with_its_size():
    """Whichever read finds it (a line grown over several reads and ended in this one, or
    one read holding all of it), a comment line too: the message names a line and its size."""
    limit = 1000
    cases = [
        ([b":" + b"c" * 600, b"c" * 500 + b"\n"], 1101),  # ended in the second read
        ([b"data: " + b"a" * 600, b"a" * 500 + b"\n\n"], 1106),
        ([b"data: " + b"a" * 1200 + b"\n\n"], 1206),  # one read
    ]
    for reads, size in cases:
        dec = SSEDecoder(limit)
        with pytest.raises(StreamError) as info:
            for read in reads:
                dec.feed(read)
        assert str(info.value).startswith(
            f"the server sent a line of {size:,} bytes or more, past the limit of 1,000 bytes"
        )


def test_a_flushed_decoder_starts_afresh():
    """flush() forgets everything, the event-size count included: the decoder then frames a
    new stream as a new decoder would, up to an event of exactly the limit."""
    dec = SSEDecoder(max_event_bytes=20)
    dec.feed(b"data: 0123456789\r")
    assert dec.flush() == [b"0123456789"]
    event = b"data:" + b"a" * 10 + b"\ndata:" + b"b" * 9 + b"\n\n"  # 20 bytes of data
    assert dec.feed(b"\n" + event) == [b"a" * 10 + b"\n" + b"b" * 9]


full_logprob = st.one_of(
    st.floats(-150, 1e-3, allow_nan=False), st.sampled_from([-9999.0, -math.inf, 0.0, 1e-6])
)


@st.composite
def full_chat_reads(draw):
    """Reads of chat chunks whose every position carries exactly k values (vLLM's shape: the
    decoder's fast path), some out of range (placeholders, -inf, rounding above 0)."""
    k = draw(st.integers(1, 20))
    payloads = []
    for _ in range(draw(st.integers(1, 8))):  # past 8 rows numpy checks them
        n = draw(st.integers(1, 3))
        rows = [draw(st.lists(full_logprob, min_size=k, max_size=k)) for _ in range(n)]
        payloads.append(json.dumps(chat_chunk([(f"t{i}", r) for i, r in enumerate(rows)])).encode())
    return k, payloads


@given(full_chat_reads())
@settings(max_examples=300, deadline=None)
def test_the_full_row_fast_path_matches_the_reference(case):
    """Full rows skip the NaN-aware steps and clamp only when a value is out of range: the
    matrix, the empty-row count and the unscored text still equal the json reference's."""
    k, payloads = case
    fast, ref = decode_payloads(payloads, k), decode_payloads_reference(payloads, k)
    assert_same(fast, ref)
    assert (fast.empty_rows, fast.unscored) == (ref.empty_rows, ref.unscored) == (0, None)
    assert fast.top_logprobs.min() >= -100.0 and fast.top_logprobs.max() <= 0.0


@pytest.mark.parametrize("odd", [[-1.0, None, -3.0], [-1.0, -2.0], [-1.0, -2.0, -3.0, -2.0]])
def test_a_read_of_many_rows_with_one_odd_row_takes_the_general_path(odd):
    """Twelve full rows and one with a null, too few or one too many (llama.cpp's appended
    copy): numpy's check sends the read down the general path, equal to the reference."""
    rows = [[-0.5, -1.5, -2.5]] * 12 + [odd]
    payloads = [json.dumps(chat_chunk([(f"t{i}", r)])).encode() for i, r in enumerate(rows)]
    fast, ref = decode_payloads(payloads, 3), decode_payloads_reference(payloads, 3)
    assert_same(fast, ref)
    assert fast.empty_rows == ref.empty_rows


@pytest.mark.parametrize("read", [1, 700, 1921, 4096, 65536])
def test_plain_data_events_in_reads_of_any_size_frame_as_the_reference(read):
    """vLLM's shape ("data: {...}" and a blank line per event) takes the one-step-an-event
    path whenever a read holds no open event; any read size frames as the reference does."""
    from deepconf.eval.bench_stream import vllm_chat_stream

    stream = vllm_chat_stream(40, 1)
    cuts = list(range(read, len(stream), read))
    assert feed_all(SSEDecoder(), stream, cuts) == sse_events_reference(stream)


@pytest.mark.parametrize(
    "payloads",
    [
        # one payload that is two chunks, beside a whole one
        [b'{"choices": []},{"choices": []}', b'{"choices": []}'],
        # a chunk cut across two payloads, each half a JSON value only with the other
        [b'{"choices": [{"index": 0, "delta": {"content": "a"', b'"b"}}]}'],
        [b'{"choices": [{"index": 0}', b'{"index": 1}]}'],
    ],
)
def test_payloads_that_are_not_one_object_each_fail_loudly(payloads):
    """Each payload is one JSON object: payloads that only make chunks when joined (as a
    JSON array would join them) are a broken stream, not chunks."""
    with pytest.raises(StreamError, match="unreadable stream chunk"):
        sse_module.decode_payloads_msgspec(payloads, 2)
    with pytest.raises(StreamError, match="unreadable stream chunk"):
        decode_payloads(payloads, 2)
