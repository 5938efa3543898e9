"""Server-sent events framing: network reads (any byte split: a line or a multi-byte UTF-8
character may straddle two reads) into the `data:` payloads of complete events. No I/O.

`SSEDecoder` is the fast path (its common read in C, backends/_framing.c, where it was
built); `sse_events_reference` the slow, obviously-correct twin spelled out byte by byte by
the WHATWG rules, which the tests compare it with. Decoding the payloads is backends/sse.py.

    sse = SSEDecoder()
    for data in sse.feed(network_bytes):               # complete events only
        ...
"""

from __future__ import annotations

from deepconf.backends import native
from deepconf.errors import ConfigError, StreamError

# C where it was built (backends/native.py); None: the Python steps below (same results).
_framing = native.load("_framing")

DEFAULT_MAX_EVENT_BYTES = 16 * 2**20  # one line or one event's data; vLLM's are ~2 KB


class SSEDecoder:
    """Incremental SSE framing (WHATWG event-stream rules, bytes in, payloads out).

    Lines end in LF, CRLF or CR; an empty line ends an event; `data:` lines of one event are
    joined with LF; comment lines (`:`) and other fields (`event:`, `id:`, `retry:`) are
    ignored. Bytes are never decoded here, so a UTF-8 character split across reads is
    reassembled before anyone decodes it.

    The cost is linear in the bytes fed, whatever the line length and the read split: only
    the new read is searched for line ends, and an incomplete line grows in place. A line, or
    the data of one event, longer than `max_event_bytes` is a `StreamError`, so a server that
    never ends a line cannot grow memory without bound. `sse_events_reference` is the slow
    twin the tests compare it with.
    """

    __slots__ = ("_after_cr", "_data", "_data_size", "_limit", "_pending")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ConfigError(f"max_event_bytes must be at least 1, not {max_event_bytes}")
        self._limit = max_event_bytes
        self._pending = bytearray()  # the incomplete trailing line; never holds CR or LF
        self._after_cr = False  # the last read ended in CR: a LF opening the next is its pair
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_size = 0  # their joined size + 1 (each line counts its LF joiner)

    def feed(self, chunk: bytes) -> list[bytes]:
        if _framing is not None and not self._after_cr and not self._data:
            # The common read ("data: {...}" and a blank line per event) in one C step.
            events = _framing.data_events(self._pending, chunk, self._limit)
            if events is not None:
                return events
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]  # the LF of a CRLF split across reads
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")  # the last one is the new incomplete line (maybe empty)
        pending, limit = self._pending, self._limit
        if len(lines) == 1:
            # Appending in place keeps a line that comes in many reads linear; joining it
            # to every read (`buf + chunk`) made a 32 MiB line cost seconds.
            if len(pending) + len(chunk) > limit:
                raise self._too_long("a line", len(pending) + len(chunk))
            pending += chunk
            return []
        if pending:
            if len(pending) + len(lines[0]) > limit:
                raise self._too_long("a line", len(pending) + len(lines[0]))
            lines[0] = b"".join((pending, lines[0]))
            pending.clear()
        if len(chunk) > limit:  # only a read this large can hold a line this large
            size = max(map(len, lines))
            if size > limit:
                raise self._too_long("a line", size)
        rest = lines.pop()
        if rest:
            pending += rest
        data, size = self._data, self._data_size
        if not data and len(lines) % 2 == 0 and not any(lines[1::2]):
            # The common shape (vLLM, SGLang): "data: {...}" and a blank line per event, no
            # event left open. One step an event; the line limit above bounds each one.
            events = lines[0::2]
            if all(line.startswith(b"data: ") for line in events):
                return [line[6:] for line in events]
        out: list[bytes] = []
        for line in lines:
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
                    size = 0
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                size += len(value) + 1
                if size > limit + 1:
                    raise self._too_long("one event", size - 1)
            # comments (":...") and other fields carry nothing we use
        self._data_size = size
        return out

    def flush(self) -> list[bytes]:
        """Payloads of an event left unterminated when the stream ended."""
        rest = self.feed(b"\n\n") if self._pending or self._data else []
        self._pending.clear()
        self._after_cr = False
        self._data.clear()
        self._data_size = 0
        return rest

    def _too_long(self, what: str, size: int) -> StreamError:
        return StreamError(
            f"the server sent {what} of {_size(size)} or more, past the limit of"
            f" {_size(self._limit)} per event: not an event stream, or events larger than"
            " expected; raise --max-event-mb if the server really sends events that large"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def sse_events_reference(
    stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> list[bytes]:
    """Slow reference for `SSEDecoder`: the payloads of a whole stream (every read, then
    `flush()`), framed at once by the WHATWG rules spelled out byte by byte.

    Raises `StreamError` where the decoder must: a line, or the data of one event, longer
    than `max_event_bytes`.
    """
    lines: list[bytes] = []
    line = bytearray()
    i = 0
    while i < len(stream):
        byte = stream[i : i + 1]
        if byte in (b"\r", b"\n"):
            lines.append(bytes(line))
            line.clear()
            if stream[i : i + 2] == b"\r\n":
                i += 1  # CRLF is one line end
        else:
            line += byte
        i += 1
    lines.append(bytes(line))  # unterminated: flush() reads it as a last line
    payloads: list[bytes] = []
    data: list[bytes] = []
    for text in lines:
        if len(text) > max_event_bytes:
            raise StreamError(f"a line of {len(text)} bytes, past the limit {max_event_bytes}")
        name, colon, value = text.partition(b":")
        if not text:
            if data:
                payloads.append(b"\n".join(data))
            data = []
        elif name == b"data" and colon:
            data.append(value[1:] if value.startswith(b" ") else value)
            if len(b"\n".join(data)) > max_event_bytes:
                raise StreamError(f"an event past the limit {max_event_bytes}")
    if data:
        payloads.append(b"\n".join(data))
    return payloads
