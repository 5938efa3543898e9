"""The C framing fast paths (backends/_framing.c) against the Python steps they stand in for:
whole HTTP chunks (h1_transport._whole_chunks) and plain SSE data events (SSEDecoder.feed).
C may stop earlier or decline a read, but never takes bytes differently."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deepconf.backends import h1_transport, sse_framing
from deepconf.backends.h1_transport import _Connection, _whole_chunks
from deepconf.backends.sse_framing import SSEDecoder, sse_events_reference
from deepconf.eval.bench_stream import vllm_chat_stream

framing = h1_transport._framing
needs_c = pytest.mark.skipif(framing is None, reason="the C part was not built (no C compiler)")

# --- whole chunks ------------------------------------------------------------------------------

size_line = st.one_of(
    st.integers(1, 300).map(lambda n: b"%x" % n),
    st.integers(1, 300).map(lambda n: b"%X" % n),
    st.integers(1, 300).map(lambda n: b"00%x" % n),  # leading zeros
    st.sampled_from([b"0", b"+5", b" 5", b"5 ", b"0x5", b"5_0", b"5;x=1", b"", b"g", b"-5"]),
    st.sampled_from([b"1" * 16, b"f" * 15, b"F" * 17]),  # sizes past any read
)


@st.composite
def chunk_buffers(draw):
    """Chunks as servers write them, with now and then a size line Python's int() reads but
    C declines (signs, spaces, 0x, underscores), a bad ending, and a cut at the end."""
    buf = bytearray(draw(st.binary(max_size=3)))
    pos = draw(st.integers(0, len(buf)))
    for _ in range(draw(st.integers(0, 8))):
        line = draw(size_line)
        try:
            size = max(0, int(line.split(b";")[0], 16))
        except ValueError:
            size = 3
        data = draw(st.binary(min_size=min(size, 400), max_size=min(size, 400)))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"XX"]))
        buf += line + b"\r\n" + data + end
    cut = draw(st.integers(0, 40))
    return bytes(buf[: max(pos, len(buf) - cut)]), pos


@needs_c
@given(chunk_buffers())
@example((b"5\r\nhello\r\n5 \r\nhello\r\n", 0))
@example((b"1\r\n\r\r\n", 0))
@settings(max_examples=400, deadline=None)
def test_c_takes_a_prefix_of_the_chunks_python_takes(case):
    """C stops at a chunk where Python stops or earlier (a size line that only int() reads),
    and its data is exactly the data of the chunks before it."""
    buf, pos = case
    out: list[bytes | bytearray] = []
    end = _whole_chunks(bytearray(buf), pos, out)
    ends = [pos]  # where each of Python's chunks ends
    for piece in out:
        ends.append(buf.index(b"\r\n", ends[-1]) + 2 + len(piece) + 2)
    assert ends[-1] == end
    got_pos, data = framing.whole_chunks(bytearray(buf), pos)
    assert got_pos in ends
    assert data == b"".join(out[: ends.index(got_pos)])
    if got_pos < end:  # declined only a size line that int() reads and plain hex does not
        line = buf[got_pos : buf.index(b"\r\n", got_pos)]
        assert not (0 < len(line) <= 15 and all(chr(c) in HEX for c in line))


HEX = "0123456789abcdefABCDEF"


@needs_c
def test_whole_chunks_of_a_vllm_stream_are_taken_whole():
    """The common case: every chunk of a server's stream is taken in one call."""
    events = vllm_chat_stream(50, 1).split(b"\n\n")[:-1]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e) + 2, e + b"\n\n") for e in events)
    pos, data = framing.whole_chunks(bytearray(body), 0)
    assert pos == len(body) and data == b"".join(e + b"\n\n" for e in events)


@needs_c
def test_whole_chunks_refuses_a_position_outside_the_buffer():
    with pytest.raises(ValueError, match="outside"):
        framing.whole_chunks(bytearray(b"5\r\n"), 9)


@pytest.mark.parametrize("c_part", [True, False], ids=["c", "python"])
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=12))
def test_a_chunked_stream_cut_anywhere_reads_the_same_with_or_without_c(c_part, cuts):
    events = vllm_chat_stream(8, 1).split(b"\n\n")[:-1]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e) + 2, e + b"\n\n") for e in events) + b"0\r\n\r\n"
    saved = h1_transport._framing
    if c_part and saved is None:
        pytest.skip("the C part was not built (no C compiler)")
    h1_transport._framing = saved if c_part else None
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop)
        conn.start_body([(b"transfer-encoding", b"chunked")], no_body=False)
        got, last = [], 0
        for cut in [*sorted(c for c in cuts if c < len(body)), len(body)]:
            conn.data_received(body[last:cut])
            last = cut
            got.append(conn._take_chunked())
    finally:
        loop.close()
        h1_transport._framing = saved
    assert b"".join(got) == b"".join(e + b"\n\n" for e in events) and conn.body_done


# --- plain data events -------------------------------------------------------------------------

event = st.one_of(
    st.binary(max_size=30)
    .filter(lambda b: b"\n" not in b and b"\r" not in b)
    .map(lambda b: b"data: " + b + b"\n\n"),
    st.sampled_from(
        [
            b": comment\n\n",
            b"data:x\n\n",
            b"data: a\ndata: b\n\n",
            b"data: c\r\n\r\n",
            b"\n",
            b"event: e\ndata: d\n\n",
            b"data: \n\n",
            b"data\n\n",
            b"dat",
        ]
    ),
)


@needs_c
@given(
    st.lists(event, max_size=12),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from([8, 40, 10_000]),
)
@example([b"data: " + b"x" * 30 + b"\n\n"], [3], 8)
@settings(max_examples=400, deadline=None)
def test_data_events_frame_as_the_python_steps_do(events, cuts, limit):
    """Any stream in any reads: the decoder with C gives the payloads (or the error) the
    decoder without it gives, read by read, and what C declines changes nothing."""
    stream = b"".join(events)
    reads, last = [], 0
    for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        reads.append(stream[last:cut])
        last = cut
    results = []
    for c_part in (True, False):
        saved = sse_framing._framing
        sse_framing._framing = saved if c_part else None
        dec, got = SSEDecoder(limit), []
        try:
            for r in reads:
                got.append(dec.feed(r))
            got.append(dec.flush())
        except Exception as exc:  # the same error, in the same read
            got.append(str(exc))
        finally:
            sse_framing._framing = saved
        results.append(got)
    assert results[0] == results[1]
    if limit == 10_000:
        assert [p for ps in results[0] for p in ps] == sse_events_reference(stream)


@needs_c
def test_a_vllm_stream_in_64_kib_reads_is_framed_by_c_read_after_read():
    """The reads a client that falls behind makes: C frames every one (none declined)."""
    stream = vllm_chat_stream(200, 1)
    pending = bytearray()
    payloads = []
    for at in range(0, len(stream), 65536):
        got = framing.data_events(pending, stream[at : at + 65536], 1 << 24)
        assert got is not None
        payloads += got
    assert payloads == sse_events_reference(stream) and not pending
