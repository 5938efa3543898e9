"""Fast decoding of OpenAI-style streaming chunks. No I/O.

`decode_payloads` turns the payloads of one read (what backends/sse_framing.py's
`SSEDecoder` framed) into one `Decoded` batch: the top-k logprob matrix, text, reasoning
text, finish reason and usage; the common read in C (backends/_chunkscan.c), every other
with msgspec, which decodes only those fields (every other field of a ~1.8 KB vLLM chunk is
skipped unparsed). `decode_payloads_reference` is the slow, obviously-correct twin on the
standard json module that the tests compare it with.

What it does not do: HTTP, retries, framing, or choosing which payloads to ask for.

    sse = SSEDecoder()
    batch = decode_payloads(sse.feed(network_bytes), k=20)
    batch.top_logprobs                                  # (n, k) float64, largest first, NaN-padded
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from deepconf.backends import native
from deepconf.confidence import LOGPROB_FLOOR
from deepconf.errors import StreamError

# C where it was built (backends/native.py); None: the Python steps below (same results).
_chunkscan = native.load("_chunkscan")

DONE = b"[DONE]"
_NONE = np.empty(0)  # no token confidences (read-only: shared by every read without rows)
_NONE.flags.writeable = False


# --- the fields we read; everything else in a chunk is skipped by msgspec -------------------
# Every field is optional and nullable: servers omit unset fields (vLLM exclude_unset) or
# send null, and one struct covers both chat and completions chunks.
# gc=False: a decoded chunk is plain data that never refers back to itself, so the garbage
# collector need not track it. A read of top-20 chunks makes ~22 structs per token, and
# tracking them set off collections that cost a large share of the decode.


class _Top(msgspec.Struct, gc=False):
    logprob: float | None = None


class _ChatToken(msgspec.Struct, gc=False):
    logprob: float | None = None
    top_logprobs: list[_Top] | None = None


class _Logprobs(msgspec.Struct, gc=False):
    content: list[_ChatToken] | None = None  # chat
    top_logprobs: list[dict[str, float | None] | None] | None = None  # completions
    token_logprobs: list[float | None] | None = None  # completions


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None  # chat
    text: str | None = None  # completions
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None


class _ErrorBody(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: int | str | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    usage: dict[str, int | None] | None = None
    error: _ErrorBody | str | None = None
    # vLLM's older in-stream error is a bare ErrorResponse: {"object": "error", "message": ...}
    object: str | None = None
    message: str | None = None


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
    empty_rows: int = 0  # token positions that came with no logprob at all
    unscored: str | None = None  # the first text that arrived without any logprob entry
    # (n,) token confidences where the decoder computed them (the C path), else None
    token_conf: np.ndarray | None = None


def top_k_matrix(rows: list[list[float | None]], k: int) -> np.ndarray:
    """The k largest values of each row, largest first, NaN-padded: (len(rows), k).

    A row longer than k whose last entry repeats a value already present is llama.cpp's
    habit of appending the sampled token (already in the top k) as entry k+1: that copy is
    dropped before choosing, so the token is not counted twice. None (a null logprob)
    counts as missing.
    """
    if not rows:
        return np.empty((0, k))
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


def _full(rows: list[list[float | None]], k: int) -> bool:
    """The common case (vLLM): exactly k real values at every position."""
    return all(len(row) == k and None not in row for row in rows)


def _full_matrix(rows: list[list[float | None]]) -> np.ndarray:
    """`top_k_matrix` of full rows: an in-place ascending sort and a reversed view, without
    the NaN-aware negations of the general case (~1 us per call)."""
    a = np.array(rows, dtype=np.float64)  # (n, k)
    a.sort(axis=1)
    return a[:, ::-1]


def _error_message(chunk: _Chunk) -> str | None:
    err = chunk.error
    if isinstance(err, str):
        return err
    if err is not None:
        return err.message or err.type or "unspecified error"
    if chunk.object == "error":
        return chunk.message or "unspecified error"
    return None


def decode_payloads(payloads: list[bytes], k: int, offset: int = 0) -> Decoded:
    """Decode the SSE payloads of one read into one batch (fast path).

    The common read (chat chunks, k values at every position, no finish or usage yet) goes
    through `_chunkscan`, C that writes each number straight into the matrix; a read's
    chunks from the first one C declines on (the end of a stream: its finish reason and
    usage), any other read, and every read where the C part was not built, through
    `decode_payloads_msgspec`. Logprobs are sanitised here, the one place they enter: see
    `sanitise`. `offset` is the number of tokens the stream delivered before this read, so
    errors can name the token. Raises `StreamError` for an in-stream error object, a payload
    that is not JSON, or a NaN logprob.
    """
    done = False
    for i, p in enumerate(payloads):
        if p == DONE:
            payloads, done = payloads[:i], True
            break
    if not payloads:
        return Decoded(np.empty((0, k)), done=done)
    if _chunkscan is not None:
        scanned = _chunkscan.decode_chat_prefix(payloads, k, LOGPROB_FLOOR)
        if scanned is not None:  # full rows of chat chunks: already sorted and clamped
            values, confs, text, reasoning, taken = scanned
            matrix = np.frombuffer(values).reshape(-1, k) if values else np.empty((0, k))
            if taken < len(payloads):  # from the first chunk C declines (a stream's end), msgspec
                rest = decode_payloads_msgspec(payloads[taken:], k, offset + len(matrix), done)
                return _joined(matrix, text, reasoning, rest)
            if not values:
                return Decoded(matrix, text, reasoning, done=done, token_conf=_NONE)
            return Decoded(matrix, text, reasoning, done=done, token_conf=np.frombuffer(confs))
    return decode_payloads_msgspec(payloads, k, offset, done)


def _joined(matrix: np.ndarray, text: str, reasoning: str, rest: Decoded) -> Decoded:
    """The C path's rows and text of a read's first chunks, then msgspec's `rest`; the
    token confidences are left to the controller, all from one matrix."""
    if len(matrix):
        rest.top_logprobs = np.concatenate((matrix, rest.top_logprobs))
    rest.text = text + rest.text
    rest.reasoning = reasoning + rest.reasoning
    return rest


def decode_payloads_msgspec(
    payloads: list[bytes], k: int, offset: int = 0, done: bool = False
) -> Decoded:
    """`decode_payloads` of payloads without [DONE], on msgspec alone: every shape."""
    if not payloads:
        return Decoded(np.empty((0, k)), done=done)
    try:
        # One call per payload, not one over the payloads joined into a JSON array: as fast
        # (a read of 1 to 130 vLLM chunks, measured), and a payload that is not one whole
        # object (`{..},{..}`, or an object the next payload completes) cannot pass as
        # chunks inside the array.
        chunks = [_CHUNK.decode(p) for p in payloads]
    except (msgspec.DecodeError, msgspec.ValidationError):
        # One payload is not plain JSON: decode one at a time to find it (and to read the
        # non-standard numbers some servers write, see _decode_one).
        chunks = []
        for p in payloads:
            chunks.append(_decode_one(p, offset + sum(_rows_in(c) for c in chunks)))
    rows: list[list[float | None]] = []
    text: list[str] = []
    reasoning: list[str] = []
    finish: str | None = None
    usage: dict[str, int] = {}
    unscored: str | None = None
    for chunk in chunks:
        if chunk.choices is None:
            msg = _error_message(chunk)
            if msg is not None:
                raise StreamError(f"the server reported an error mid-stream: {msg}")
        else:
            for choice in chunk.choices:
                if choice.index != 0:
                    continue  # n=1 requests: other choices cannot occur
                scored = len(rows)
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
                scored = len(rows) > scored
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        text.append(delta.content)
                    r = delta.reasoning_content or delta.reasoning
                    if r:
                        reasoning.append(r)
                    piece = delta.content or r
                else:
                    piece = choice.text
                    if piece:
                        text.append(piece)
                if piece and not scored and unscored is None:
                    unscored = piece
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
        if chunk.usage:
            usage = {key: v for key, v in chunk.usage.items() if isinstance(v, int)}
    # Per read, not per token: the NaN-aware steps (np.clip, the empty-row count) cost more
    # than the decode itself at one token per read; full rows have no empty row.
    matrix = _full_rows_sanitised(rows, k) if rows else None
    if matrix is not None:
        empty = 0
    else:
        matrix = sanitise(top_k_matrix(rows, k))
        empty = _empty_rows(matrix)
    return Decoded(matrix, "".join(text), "".join(reasoning), finish, usage, done, empty, unscored)


# Rows per read from which numpy checks them faster than Python does row by row.
_NUMPY_CHECK_ROWS = 8


def _full_rows_sanitised(rows: list[list[float | None]], k: int) -> np.ndarray | None:
    """`sanitise(top_k_matrix(rows, k))` when every row holds exactly k values (the common
    case), else None. Rows hold no NaN here (msgspec refuses it; _decode_one fails the trace
    on it), so the clamp has work only when the smallest or largest value is out of range."""
    if len(rows) < _NUMPY_CHECK_ROWS:  # a read of a few tokens: Python is quicker
        if not _full(rows, k):
            return None
        matrix = _full_matrix(rows)
        if min(map(min, rows)) < LOGPROB_FLOOR or max(map(max, rows)) > 0.0:  # type: ignore[type-var]
            sanitise(matrix)
        return matrix
    # A read that caught up with many tokens: a null becomes NaN, which sorts last and makes
    # the largest value NaN; rows of other lengths do not make an (n, k) array.
    try:
        a = np.array(rows, dtype=np.float64)  # (n, k)
    except ValueError:
        return None
    if a.ndim != 2 or a.shape[1] != k:
        return None
    a.sort(axis=1)
    hi = a[:, -1].max()
    if math.isnan(hi):
        return None
    if hi > 0.0 or a[:, 0].min() < LOGPROB_FLOOR:
        sanitise(a)
    return a[:, ::-1]


def sanitise(top_logprobs: np.ndarray) -> np.ndarray:
    """Clamp logprobs into [LOGPROB_FLOOR, 0] in place; NaN (a missing entry) stays NaN.

    A logprob above 0 is a rounding artefact (+1e-6 with k=1) or a broken server; below the
    floor are -inf, -1e308 and OpenAI's -9999 placeholders, which averaged raw would swamp
    a confidence or overflow a sum to -inf. After this every confidence, threshold and vote
    weight downstream is finite by construction.
    """
    return np.clip(top_logprobs, LOGPROB_FLOOR, 0.0, out=top_logprobs)


def _empty_rows(matrix: np.ndarray) -> int:
    """Positions that carry no logprob at all (largest first: an empty column 0 is an
    empty row)."""
    if matrix.shape[1] == 0:
        return matrix.shape[0]
    return int(np.isnan(matrix[:, 0]).sum())


def _rows_in(chunk: _Chunk) -> int:
    """Token positions one decoded chunk carries (for error positions)."""
    n = 0
    for choice in chunk.choices or []:
        lp = choice.logprobs
        if choice.index == 0 and lp is not None:
            n += len(lp.content or lp.top_logprobs or lp.token_logprobs or [])
    return n


def _nan_row(chunk: _Chunk) -> int | None:
    """0-based position within the chunk of the first token whose top logprobs hold a NaN."""
    row = 0
    for choice in chunk.choices or []:
        lp = choice.logprobs
        if choice.index != 0 or lp is None:
            continue
        if lp.content is not None:
            values = [[t.logprob for t in tok.top_logprobs or []] for tok in lp.content]
        else:
            values = [list((d or {}).values()) for d in lp.top_logprobs or []]
        for vals in values:
            if any(v is not None and math.isnan(v) for v in vals):
                return row
            row += 1
    return None


def _decode_one(payload: bytes, offset: int = 0) -> _Chunk:
    """One payload. Strict JSON goes through msgspec; a payload msgspec refuses is read
    again by the json module, which also takes the NaN, Infinity and 1e400 some servers
    write (Python's json.dumps does): infinities are clamped later, NaN fails the trace
    naming its token."""
    try:
        return _CHUNK.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        shown = payload[:200].decode("utf-8", "replace")
        try:
            chunk = msgspec.convert(json.loads(payload), _Chunk)
        except (ValueError, msgspec.ValidationError):
            raise StreamError(
                f"the server sent an unreadable stream chunk ({exc}): {shown!r}"
            ) from exc
        row = _nan_row(chunk)
        if row is not None:
            raise StreamError(
                f"the server sent NaN as a logprob at token {offset + row + 1}: its logprobs"
                " are broken, so this trace cannot be scored"
            ) from exc
        return chunk


def decode_payloads_reference(payloads: list[bytes], k: int, offset: int = 0) -> Decoded:
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
            before = len(rows)
            lp = choice.get("logprobs") or {}
            if lp.get("content") is not None:
                for tok in lp["content"]:
                    tops = tok.get("top_logprobs") or []
                    rows.append(_reference_row([t.get("logprob") for t in tops], k))
            elif lp.get("top_logprobs") is not None:
                for d in lp["top_logprobs"]:
                    rows.append(_reference_row(list((d or {}).values()), k))
            elif lp.get("token_logprobs") is not None:
                rows.extend([] for _ in lp["token_logprobs"])
            for i in range(before, len(rows)):
                if any(math.isnan(v) for v in rows[i] if v is not None):
                    raise StreamError(f"the server sent NaN as a logprob at token {offset + i + 1}")
            delta = choice.get("delta")
            if delta is not None:
                piece = delta.get("content") or ""
                out.text += piece
                r = delta.get("reasoning_content") or delta.get("reasoning") or ""
                out.reasoning += r
                piece = piece or r
            else:
                piece = choice.get("text") or ""
                out.text += piece
            if piece and len(rows) == before and out.unscored is None:
                out.unscored = piece
            if choice.get("finish_reason") is not None:
                out.finish_reason = choice["finish_reason"]
        if obj.get("usage"):
            out.usage = {key: v for key, v in obj["usage"].items() if isinstance(v, int)}
    matrix = np.full((len(rows), k), np.nan)
    for i, vals in enumerate(rows):
        present = sorted((float(v) for v in vals if v is not None), reverse=True)[:k]
        clamped = [min(0.0, max(LOGPROB_FLOOR, v)) for v in present]  # ints too
        matrix[i, : len(clamped)] = clamped
        out.empty_rows += not clamped
    out.top_logprobs = matrix
    return out


def _reference_row(values: list[object], k: int) -> list[float | None]:
    """One position's values, minus llama.cpp's appended copy of the sampled token."""
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise StreamError(f"the server sent an unreadable stream chunk: logprob {v!r}")
    if len(values) > k and values[-1] in values[:-1]:
        values = values[:-1]
    return values
