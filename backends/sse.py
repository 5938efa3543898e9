"""Server-sent events framing and fast decoding of OpenAI-style streaming chunks. No I/O.

`SSEDecoder` turns network reads (any byte split: a line or a multi-byte UTF-8 character may
straddle two reads) into the `data:` payloads of complete events. `decode_payloads` turns
the payloads of one read into one `Decoded` batch: the top-k logprob matrix, text, reasoning
text, finish reason and usage, decoding only those fields with msgspec (every other field
of a ~1.8 KB vLLM chunk is skipped unparsed). `decode_payloads_reference` is the slow,
obviously-correct twin on the standard json module that the tests compare it with.

What it does not do: HTTP, retries, or choosing which payloads to ask for.

    sse = SSEDecoder()
    for data in sse.feed(network_bytes):               # complete events only
        ...
    batch = decode_payloads(sse.feed(network_bytes), k=20)
    batch.top_logprobs                                  # (n, k) float64, largest first, NaN-padded
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from deepconf.errors import StreamError

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental SSE framing (WHATWG event-stream rules, bytes in, payloads out).

    Lines end in LF, CRLF or CR; an empty line ends an event; `data:` lines of one event are
    joined with LF; comment lines (`:`) and other fields (`event:`, `id:`, `retry:`) are
    ignored. Bytes are never decoded here, so a UTF-8 character split across reads is
    reassembled before anyone decodes it.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""  # an incomplete trailing line
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF: keep it for the next read.
            keep_cr = buf.endswith(b"\r")
            buf = buf[:-1] if keep_cr else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buf += b"\r"
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        out: list[bytes] = []
        data = self._data
        for line in buf[:end].split(b"\n"):
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # comments (":...") and other fields carry nothing we use
        return out

    def flush(self) -> list[bytes]:
        """Payloads of an event left unterminated when the stream ended."""
        rest = self.feed(b"\n\n") if self._buf.strip() or self._data else []
        self._buf = b""
        return rest


# --- the fields we read; everything else in a chunk is skipped by msgspec -------------------
# Every field is optional and nullable: servers omit unset fields (vLLM exclude_unset) or
# send null, and one struct covers both chat and completions chunks.


class _Top(msgspec.Struct):
    logprob: float | None = None


class _ChatToken(msgspec.Struct):
    logprob: float | None = None
    top_logprobs: list[_Top] | None = None


class _Logprobs(msgspec.Struct):
    content: list[_ChatToken] | None = None  # chat
    top_logprobs: list[dict[str, float | None] | None] | None = None  # completions
    token_logprobs: list[float | None] | None = None  # completions


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None  # chat
    text: str | None = None  # completions
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: int | str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: dict[str, int | None] | None = None
    error: _ErrorBody | str | None = None
    # vLLM's older in-stream error is a bare ErrorResponse: {"object": "error", "message": ...}
    object: str | None = None
    message: str | None = None


_CHUNKS = msgspec.json.Decoder(list[_Chunk])
_CHUNK = msgspec.json.Decoder(_Chunk)


@dataclass(slots=True)
class Decoded:
    """What the payloads of one network read carried, in order."""

    top_logprobs: np.ndarray  # (n, k) float64, largest first, NaN where fewer than k came
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    done: bool = False  # `data: [DONE]` was seen; anything after it is ignored


def top_k_matrix(rows: list[list[float | None]], k: int) -> np.ndarray:
    """The k largest values of each row, largest first, NaN-padded: (len(rows), k).

    A row longer than k whose last entry repeats a value already present is llama.cpp's
    habit of appending the sampled token (already in the top k) as entry k+1: that copy is
    dropped before choosing, so the token is not counted twice. None (a null logprob)
    counts as missing.
    """
    if not rows:
        return np.empty((0, k))
    if all(len(row) == k and None not in row for row in rows):
        # The common case (vLLM: exactly k real values per position): an in-place ascending
        # sort and a reversed view, without the NaN-aware negations below (~1 us per call).
        a = np.array(rows, dtype=np.float64)  # (n, k)
        a.sort(axis=1)
        return a[:, ::-1]
    width = k
    for i, row in enumerate(rows):
        n = len(row)
        if n > k:
            if row[-1] in row[:-1]:
                row = rows[i] = row[:-1]
                n -= 1
            width = max(width, n)
        if n < width:
            rows[i] = row + [math.nan] * (width - n)
    for i, row in enumerate(rows):  # rows padded before a wider row was seen
        if len(row) < width:
            rows[i] = row + [math.nan] * (width - len(row))
    a = np.array(rows, dtype=np.float64)  # (n, width); None -> NaN
    # Sorting the negation puts the largest first and NaN (missing) last.
    return -np.sort(-a, axis=1)[:, :k]  # (n, k)


def _error_message(chunk: _Chunk) -> str | None:
    err = chunk.error
    if isinstance(err, str):
        return err
    if err is not None:
        return err.message or err.type or "unspecified error"
    if chunk.object == "error":
        return chunk.message or "unspecified error"
    return None


def decode_payloads(payloads: list[bytes], k: int) -> Decoded:
    """Decode the SSE payloads of one read into one batch (fast path).

    All payloads are decoded by one msgspec call, as a JSON array, so the per-call cost is
    paid once per network read rather than once per token. Raises `StreamError` for an
    in-stream error object or a payload that is not JSON.
    """
    done = False
    for i, p in enumerate(payloads):
        if p == DONE:
            payloads, done = payloads[:i], True
            break
    if not payloads:
        return Decoded(np.empty((0, k)), done=done)
    if len(payloads) == 1:
        chunks = [_decode_one(payloads[0])]
    else:
        try:
            chunks = _CHUNKS.decode(b"[" + b",".join(payloads) + b"]")
        except (msgspec.DecodeError, msgspec.ValidationError):
            chunks = [_decode_one(p) for p in payloads]  # finds and reports the bad one
    rows: list[list[float | None]] = []
    text: list[str] = []
    reasoning: list[str] = []
    finish: str | None = None
    usage: dict[str, int] = {}
    for chunk in chunks:
        if chunk.choices is None:
            msg = _error_message(chunk)
            if msg is not None:
                raise StreamError(f"the server reported an error mid-stream: {msg}")
        else:
            for choice in chunk.choices:
                if choice.index != 0:
                    continue  # n=1 requests: other choices cannot occur
                lp = choice.logprobs
                if lp is not None:
                    if lp.content is not None:
                        for tok in lp.content:
                            tops = tok.top_logprobs
                            rows.append([t.logprob for t in tops] if tops else [])
                    elif lp.top_logprobs is not None:
                        for d in lp.top_logprobs:
                            rows.append(list(d.values()) if d else [])
                    elif lp.token_logprobs is not None:
                        rows.extend([] for _ in lp.token_logprobs)
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        text.append(delta.content)
                    r = delta.reasoning_content or delta.reasoning
                    if r:
                        reasoning.append(r)
                elif choice.text:
                    text.append(choice.text)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
        if chunk.usage:
            usage = {key: v for key, v in chunk.usage.items() if isinstance(v, int)}
    return Decoded(top_k_matrix(rows, k), "".join(text), "".join(reasoning), finish, usage, done)


def _decode_one(payload: bytes) -> _Chunk:
    try:
        return _CHUNK.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        shown = payload[:200].decode("utf-8", "replace")
        raise StreamError(f"the server sent an unreadable stream chunk ({exc}): {shown!r}") from exc


def decode_payloads_reference(payloads: list[bytes], k: int) -> Decoded:
    """Slow reference for `decode_payloads`: json module, one payload at a time, plain loops."""
    out = Decoded(np.empty((0, k)))
    rows: list[list[float]] = []
    for p in payloads:
        if p == DONE:
            out.done = True
            break
        try:
            obj = json.loads(p.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StreamError(f"the server sent an unreadable stream chunk: {p[:200]!r}") from exc
        if obj.get("choices") is None:
            err = obj.get("error")
            if err is not None or obj.get("object") == "error":
                msg = err if isinstance(err, str) else (err or obj).get("message")
                raise StreamError(f"the server reported an error mid-stream: {msg}")
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            lp = choice.get("logprobs") or {}
            if lp.get("content") is not None:
                for tok in lp["content"]:
                    tops = tok.get("top_logprobs") or []
                    vals = [t.get("logprob") for t in tops]
                    vals = [math.nan if v is None else float(v) for v in vals]
                    if len(vals) > k and vals[-1] in vals[:-1]:
                        vals = vals[:-1]  # llama.cpp's appended sampled token
                    rows.append(vals)
            elif lp.get("top_logprobs") is not None:
                for d in lp["top_logprobs"]:
                    vals = [math.nan if v is None else float(v) for v in (d or {}).values()]
                    if len(vals) > k and vals[-1] in vals[:-1]:
                        vals = vals[:-1]
                    rows.append(vals)
            elif lp.get("token_logprobs") is not None:
                rows.extend([] for _ in lp["token_logprobs"])
            delta = choice.get("delta")
            if delta is not None:
                out.text += delta.get("content") or ""
                out.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            else:
                out.text += choice.get("text") or ""
            if choice.get("finish_reason") is not None:
                out.finish_reason = choice["finish_reason"]
        if obj.get("usage"):
            out.usage = {key: v for key, v in obj["usage"].items() if isinstance(v, int)}
    matrix = np.full((len(rows), k), np.nan)
    for i, vals in enumerate(rows):
        present = sorted((v for v in vals if not math.isnan(v)), reverse=True)[:k]
        matrix[i, : len(present)] = present
    out.top_logprobs = matrix
    return out
