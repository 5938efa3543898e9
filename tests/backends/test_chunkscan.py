"""The C fast path of chunk decoding (backends/_chunkscan.c) against the msgspec path and the
json reference: it may decline any read (None), but what it returns must equal theirs, and
it must decline every read msgspec refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deepconf.backends import sse
from deepconf.backends.sse import (
    decode_payloads,
    decode_payloads_msgspec,
    decode_payloads_reference,
)
from deepconf.confidence import LOGPROB_FLOOR, token_confidence
from deepconf.errors import StreamError
from deepconf.eval.bench_stream import split_events, vllm_chat_stream

scan = sse._chunkscan
needs_c = pytest.mark.skipif(scan is None, reason="the C part was not built (no C compiler)")


def same(a: sse.Decoded, b: sse.Decoded) -> None:
    np.testing.assert_array_equal(a.top_logprobs, b.top_logprobs)
    fields = ("text", "reasoning", "finish_reason", "usage", "done", "empty_rows", "unscored")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


@needs_c
def test_a_vllm_stream_is_read_by_the_c_path_read_after_read():
    """The shape the fast path exists for: every read of a vLLM top-20 stream but the last
    (finish reason, usage) is taken by C, and equals msgspec's and the reference's."""
    payloads = [e[6:].rstrip(b"\n") for e in split_events(vllm_chat_stream(300, 1))]
    payloads = [p for p in payloads if p != b"[DONE]"]
    reads = [payloads[i : i + 37] for i in range(0, len(payloads), 37)]
    taken = [scan.decode_chat(r, 20, LOGPROB_FLOOR) is not None for r in reads]
    assert taken[:-1] == [True] * (len(reads) - 1) and taken[-1] is False
    for r in reads:
        fast = decode_payloads(r, 20)
        same(fast, decode_payloads_msgspec(r, 20))
        same(fast, decode_payloads_reference(r, 20))
    # The last read: C takes its chunks up to the stream's end, msgspec the rest.
    last = reads[-1]
    prefix = scan.decode_chat_prefix(last, 20, LOGPROB_FLOOR)
    assert prefix is not None and 0 < prefix[4] < len(last)
    assert scan.decode_chat(last[: prefix[4]], 20, LOGPROB_FLOOR) == prefix[:4]
    assert scan.decode_chat(last[: prefix[4] + 1], 20, LOGPROB_FLOOR) is None
    assert b'"finish_reason":' in last[prefix[4]] or b'"usage":' in last[prefix[4]]


# --- valid chat chunks in every spelling ------------------------------------------------------

KNOWN = {"choices", "usage", "error", "object", "message", "index", "delta", "text", "logprobs"}
KNOWN |= {"finish_reason", "content", "reasoning_content", "reasoning", "top_logprobs"}
KNOWN |= {"token_logprobs", "logprob"}

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
extra_key = st.text(max_size=8).filter(lambda s: s not in KNOWN)
logprob = st.one_of(
    st.floats(-150, 1e-3, allow_nan=False),
    st.integers(-200, 0),
    st.sampled_from([0.0, -0.0, 1e-6, -1e-300, -0.1234567890123456789, -3e-7, -100.0]),
)


@st.composite
def shuffled(draw, fields: dict) -> dict:
    """The fields in a random order, with unknown fields of any JSON type among them."""
    fields = dict(fields)
    for key, value in draw(st.dictionaries(extra_key, json_value, max_size=2)).items():
        fields.setdefault(key, value)
    order = draw(st.permutations(list(fields)))
    return {key: fields[key] for key in order}


@st.composite
def top_entry(draw) -> dict:
    """A top-k entry in vLLM's and SGLang's own spelling ({"token", "logprob", "bytes"} in
    that order, which C reads by a matcher of its own), or in any other."""
    value = draw(logprob)
    if draw(st.booleans()):
        token = draw(st.text(max_size=6))
        return {"token": token, "logprob": value, "bytes": list(token.encode())}
    return draw(shuffled({"token": "t", "logprob": value}))


@st.composite
def chat_read(draw):
    """A read of chat chunks with exactly k values at every position, spelt every way JSON
    allows: key order, unknown fields, nulls, integers, exponents, escapes and whitespace."""
    k = draw(st.integers(1, 20))
    payloads = []
    for _ in range(draw(st.integers(1, 6))):
        tokens = []
        for _ in range(draw(st.integers(1, 3))):
            tops = [draw(top_entry()) for _ in range(k)]
            own = draw(st.one_of(st.none(), logprob))
            tokens.append(draw(shuffled({"logprob": own, "top_logprobs": tops})))
        delta = {}
        for name in draw(st.sets(st.sampled_from(["content", "reasoning_content", "reasoning"]))):
            delta[name] = draw(st.one_of(st.none(), st.text(max_size=8)))
        choice = {"delta": draw(shuffled(delta)), "logprobs": draw(shuffled({"content": tokens}))}
        for name in ("index", "finish_reason", "text"):
            if draw(st.booleans()):
                choice[name] = 0 if name == "index" else None
        chunk = {"choices": [draw(shuffled(choice))], "object": "chat.completion.chunk"}
        for name in ("usage", "error", "message"):
            if draw(st.booleans()):
                chunk[name] = None
        chunk = draw(shuffled(chunk))
        ascii_only = draw(st.booleans())
        separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r\n ")]))
        payloads.append(json.dumps(chunk, ensure_ascii=ascii_only, separators=separators).encode())
    return k, payloads


@needs_c
@given(chat_read())
@example((1, [b'{"choices": [], "\x7f": "\x7f"}']))  # DEL stands in a string unescaped
@settings(max_examples=300, deadline=None)
def test_the_c_path_takes_and_equals_every_spelling_of_full_chat_reads(case):
    """Every such read is taken by C (none declined) and decodes to exactly what msgspec and
    the json reference make of it: rows sorted and clamped, content and reasoning text."""
    k, payloads = case
    assert scan.decode_chat(payloads, k, LOGPROB_FLOOR) is not None
    fast = decode_payloads(payloads, k)
    same(fast, decode_payloads_msgspec(payloads, k))
    same(fast, decode_payloads_reference(payloads, k))
    # and its token confidences are token_confidence's, but for the order of the sum
    np.testing.assert_allclose(fast.token_conf, token_confidence(fast.top_logprobs), rtol=1e-14)


# --- anything else is declined ------------------------------------------------------------------

ROW = '[{"logprob": -0.5}, {"logprob": -1.5}]'


def chunk(choice: str = "", top: str = "", extra: str = "", row: str = ROW) -> bytes:
    token = f'{{"logprob": -0.5, "top_logprobs": {row}{top}}}'
    logprobs = f'{{"content": [{token}]}}'
    body = f'{{"index": 0, "delta": {{"content": "x"}}, "logprobs": {logprobs}{choice}}}'
    return f'{{"choices": [{body}]{extra}}}'.encode()


VLLM_ROW = (
    '[{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5,'
    ' "bytes": [98]}]'
)
TAKEN_VLLM_ROWS = {
    "compact": VLLM_ROW.replace(": ", ":").replace(", ", ","),
    "no bytes": VLLM_ROW.replace("[98]", "[]"),
    "a float among the bytes": VLLM_ROW.replace("[98]", "[9.8]"),
    "a negative byte": VLLM_ROW.replace("[98]", "[-98]"),
    "an exponent": VLLM_ROW.replace("-1.5", "-1.5e-3"),
    "an integer logprob": VLLM_ROW.replace("-1.5", "-2"),
    "17 digits": VLLM_ROW.replace("-1.5", "-1.2345678901234567"),
    "an escaped token": VLLM_ROW.replace('"b"', '"\\u00e9\\n"'),
    "another order": VLLM_ROW.replace(
        '"token": "b", "logprob": -1.5', '"logprob": -1.5, "token": "b"'
    ),
    "one more field": VLLM_ROW.replace("[98]}", '[98], "id": 7}'),
}


@needs_c
@pytest.mark.parametrize("row", TAKEN_VLLM_ROWS.values(), ids=TAKEN_VLLM_ROWS.keys())
def test_vllms_spelling_and_its_neighbours_are_taken_as_msgspec_reads_them(row):
    """The entry matcher's spelling, and each way out of it into the general steps."""
    payload = chunk(row=row)
    assert scan.decode_chat([payload], 2, LOGPROB_FLOOR) is not None
    same(decode_payloads([payload], 2), decode_payloads_msgspec([payload], 2))


DECLINED = {
    "a finish reason": chunk(choice=', "finish_reason": "stop"'),
    "usage": chunk(extra=', "usage": {"completion_tokens": 1}'),
    "an error object": chunk(extra=', "error": {"message": "boom"}'),
    "vLLM's old error": chunk(extra=', "object": "error", "message": "boom"'),
    "choice 1": chunk(choice=', "index": 1'),
    "an index of 0.0": chunk(choice=', "index": 0.0'),
    "completions text": chunk(choice=', "text": "x"'),
    "k + 1 values": chunk(row='[{"logprob": -0.5}, {"logprob": -1.5}, {"logprob": -0.5}]'),
    "k - 1 values": chunk(row='[{"logprob": -0.5}]'),
    "a null value": chunk(row='[{"logprob": -0.5}, {"logprob": null}]'),
    "a missing value": chunk(row='[{"logprob": -0.5}, {"token": "a"}]'),
    "no top_logprobs": chunk(row="null"),
    "text without logprobs": b'{"choices": [{"delta": {"content": "x"}, "logprobs": null}]}',
    "a duplicate field": chunk(choice=', "delta": {"content": "y"}'),
    "1e400": chunk(row='[{"logprob": -0.5}, {"logprob": -1e400}]'),
    "NaN": chunk(row='[{"logprob": -0.5}, {"logprob": NaN}]'),
    "-Infinity": chunk(row='[{"logprob": -0.5}, {"logprob": -Infinity}]'),
    "a bool logprob": chunk(row='[{"logprob": -0.5}, {"logprob": true}]'),
    "a string logprob": chunk(row='[{"logprob": -0.5}, {"logprob": "-1"}]'),
    "a leading zero": chunk(row='[{"logprob": -0.5}, {"logprob": -01.5}]'),
    "a lone surrogate": chunk(extra=', "id": "\\ud800"'),
    "invalid UTF-8": chunk(extra=', "id": "\xff"').replace(b"\xc3\xbf", b"\xff"),
    "a raw newline in a string": chunk(extra=', "id": "a\nb"'),
    "a trailing comma": chunk(extra=', "id": 1,'),
    "trailing bytes": chunk() + b" x",
    "two objects": chunk() + b"," + chunk(),
    "a non-object": b"[1]",
    "an empty payload": b"",
    "nesting past 64": chunk(extra=', "deep": ' + "[" * 70 + "]" * 70),
    "a leading zero among the bytes": chunk(row=VLLM_ROW.replace("[98]", "[098]")),
    "a null logprob in vLLM's spelling": chunk(row=VLLM_ROW.replace("-1.5", "null")),
    "an entry without its brace": chunk(row=VLLM_ROW.replace("[98]}]", "[98]]")),
}


@needs_c
@pytest.mark.parametrize("payload", DECLINED.values(), ids=DECLINED.keys())
def test_every_read_outside_the_common_shape_is_declined(payload):
    """Left to msgspec, which reads the shape (or names the error) as it always has."""
    assert scan.decode_chat([chunk(), payload], 2, LOGPROB_FLOOR) is None


@needs_c
def test_a_declined_read_still_decodes_as_the_reference():
    for name, payload in DECLINED.items():
        try:
            want = decode_payloads_msgspec([payload], 2)
        except StreamError:
            with pytest.raises(StreamError):
                decode_payloads([payload], 2)
            continue
        same(decode_payloads([payload], 2), want), name


@needs_c
def test_an_escaped_key_names_its_field():
    """ "\\u006cogprob" is "logprob" to msgspec, and so to C."""
    payload = chunk(row='[{"logprob": -0.5}, {"\\u006cogprob": -1.5, "\\u0022": 1}]')
    assert scan.decode_chat([payload], 2, LOGPROB_FLOOR) is not None
    same(decode_payloads([payload], 2), decode_payloads_msgspec([payload], 2))
    assert decode_payloads([payload], 2).top_logprobs.tolist() == [[-0.5, -1.5]]


# --- and it never says yes where msgspec says no --------------------------------------------

BASE = [e[6:].rstrip(b"\n") for e in split_events(vllm_chat_stream(3, 1))][1:3]


@needs_c
@given(
    st.integers(0, 1),
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(["put", "insert", "delete"]),
            st.sampled_from(b'{}[]",:\\ -.0123456789eEnulltrfa\xc3\xa9\xff\x00\n'),
        ),
        min_size=1,
        max_size=3,
    ),
)
@example(0, [(60, "put", ord("["))])
@settings(max_examples=600, deadline=None)
def test_broken_bytes_are_declined_or_read_as_msgspec_reads_them(which, edits):
    """Random edits of a real vLLM chunk (one or more bytes replaced, inserted or deleted):
    C returns None or exactly msgspec's result, never a result where msgspec fails."""
    payload = bytearray(BASE[which])
    for at, op, byte in edits:
        at %= len(payload) + (op == "insert")
        if op == "put" and payload:
            payload[at % len(payload)] = byte
        elif op == "insert":
            payload.insert(at, byte)
        elif payload:
            del payload[at % len(payload)]
    payloads = [BASE[1 - which], bytes(payload)]
    got = scan.decode_chat(payloads, 20, LOGPROB_FLOOR)
    try:
        want = decode_payloads_msgspec(payloads, 20)
    except StreamError:
        assert got is None
        return
    if got is not None:
        same(decode_payloads(payloads, 20), want)


def test_without_the_c_part_every_read_takes_msgspec(monkeypatch):
    """An install without a C compiler decodes the same reads the same way, and leaves the
    token confidences to the controller (token_conf None)."""
    payloads = [e[6:].rstrip(b"\n") for e in split_events(vllm_chat_stream(50, 1))]
    want = decode_payloads(payloads, 20)
    monkeypatch.setattr(sse, "_chunkscan", None)
    got = decode_payloads(payloads, 20)
    same(got, want)
    assert got.token_conf is None


@needs_c
def test_c_confidences_are_the_mean_of_each_clamped_row():
    """-mean of the row after the clamp: -9999 counts as -100, +0.5 as 0."""
    row = '[{"logprob": -9999}, {"logprob": 0.5}, {"logprob": -2}, {"logprob": -1}]'
    got = decode_payloads([chunk(row=row), chunk(row=row.replace("-9999", "-3"))], 4)
    assert got.token_conf.tolist() == [103 / 4, 6 / 4]
    assert got.top_logprobs.tolist() == [[0.0, -1.0, -2.0, -100.0], [0.0, -1.0, -2.0, -3.0]]


@needs_c
@pytest.mark.parametrize("name", DECLINED)
@pytest.mark.parametrize("at", [0, 1, 3, 5])
def test_a_read_declined_midway_joins_c_s_chunks_and_msgspec_s_as_msgspec_reads_it(name, at):
    """The chunks before the first declined one are C's, the rest msgspec's: the read decodes
    exactly as msgspec alone decodes it (or fails as it fails, naming the same token), and
    its token confidences are left to the controller."""
    payloads = [chunk() for _ in range(5)]
    payloads.insert(at, DECLINED[name])
    try:
        want = decode_payloads_msgspec(payloads, 2, offset=7)
    except StreamError as exc:
        with pytest.raises(StreamError) as got:
            decode_payloads(payloads, 2, offset=7)
        assert str(got.value) == str(exc)
        return
    got = decode_payloads(payloads, 2, offset=7)
    same(got, want)
    prefix = scan.decode_chat_prefix(payloads, 2, LOGPROB_FLOOR)
    assert (prefix is None) == (at == 0)
    if prefix is not None:
        assert prefix[4] == at and got.token_conf is None


@needs_c
def test_the_prefix_of_a_read_c_takes_whole_is_the_whole_read():
    payloads = [chunk() for _ in range(4)]
    whole = scan.decode_chat(payloads, 2, LOGPROB_FLOOR)
    assert scan.decode_chat_prefix(payloads, 2, LOGPROB_FLOOR) == (*whole, 4)
    assert scan.decode_chat_prefix([], 2, LOGPROB_FLOOR)[4] == 0
