"""Trace records and trace files.

A `TraceRecord` is everything one trace produced: its status, token count, per-token
confidences, text, extracted answer and metrics. A trace file is JSONL with one record per
line, appended and flushed the moment each trace ends, so a crash keeps every finished
trace. Each line is self-contained: it repeats the solve's metadata (problem id, model,
sampling, k, window, confidence formula) so any line can be replayed or re-thresholded on
its own. This module does no generation and no voting.

    with TraceWriter("traces.jsonl", meta) as writer:
        writer.write(record)
    for stored in read_traces("traces.jsonl"):
        stored.meta["window"], stored.record.token_confs
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np

from deepconf.confidence import TraceMetrics
from deepconf.errors import ConfigError

# The token-confidence formula every trace file records, so that files written by a later
# formula are never silently mixed with these: C_i = -mean(top-k logprobs).
FORMULA = "neg_mean_topk"

# Decimals kept for token confidences in files (only there: computation never rounds).
# 1e-4 is far below any threshold gap that matters (C spans ~3..22 for k=20).
CONF_DECIMALS = 4

# Keys of a trace-file line that belong to the solve, not to the trace.
META_KEYS: tuple[str, ...] = (
    "problem_id",
    "model",
    "mode",
    "variant",
    "sampling",
    "k",
    "window",
    "tail",
    "bottom_fraction",
    "formula",
)


class TraceStatus(StrEnum):
    """How a trace ended."""

    COMPLETED = "completed"  # the model finished (finish_reason stop or similar)
    PRUNED = "pruned"  # its full-window group confidence fell below the threshold
    CANCELLED = "cancelled"  # stopped because the solve stopped (consensus, token budget)
    FAILED = "failed"  # the backend raised; replaced while budget remains
    TRUNCATED = "truncated"  # hit max_tokens (finish_reason "length")


@dataclass(slots=True)
class TraceRecord:
    """One trace, as recorded.

    `tokens` counts every token received, including those after a prune decision that were
    already in flight. `pruned_at` is the 1-based token position whose full-window group
    confidence first fell below `threshold`.
    """

    index: int
    phase: str  # "warmup" | "online" | "offline"
    status: TraceStatus
    tokens: int
    token_confs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (tokens,)
    text: str = ""
    reasoning: str = ""
    answer: str | None = None
    metrics: TraceMetrics | None = None
    finish_reason: str | None = None
    error: str | None = None
    seed: int | None = None
    pruned_at: int | None = None
    elapsed: float = 0.0  # seconds from launch to end
    threshold: float | None = None  # the prune threshold in force, when known
    server_tokens: int | None = None  # completion tokens the server's usage reported

    @property
    def finished(self) -> bool:
        """Ran to its natural end (may vote, given an answer and enough confidence)."""
        return self.status in (TraceStatus.COMPLETED, TraceStatus.TRUNCATED)

    def to_json_dict(self, *, token_confs: bool = True) -> dict[str, Any]:
        """A JSON-able dict; token confidences are rounded here, and only here."""
        d: dict[str, Any] = {
            "index": self.index,
            "phase": self.phase,
            "status": str(self.status),
            "tokens": self.tokens,
            "answer": self.answer,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "threshold": self.threshold,
            "pruned_at": self.pruned_at,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "seed": self.seed,
            "elapsed": round(self.elapsed, 4),
            "server_tokens": self.server_tokens,
            "text": self.text,
            "reasoning": self.reasoning,
        }
        if token_confs:
            d["token_confs"] = np.round(self.token_confs, CONF_DECIMALS).tolist()
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> TraceRecord:
        """Inverse of `to_json_dict`; metadata keys (see META_KEYS) are ignored."""
        try:
            metrics = d.get("metrics")
            return cls(
                index=int(d["index"]),
                phase=str(d["phase"]),
                status=TraceStatus(d["status"]),
                tokens=int(d["tokens"]),
                token_confs=np.asarray(d.get("token_confs", []), dtype=np.float64),
                text=d.get("text", ""),
                reasoning=d.get("reasoning", ""),
                answer=d.get("answer"),
                metrics=TraceMetrics(**metrics) if metrics is not None else None,
                finish_reason=d.get("finish_reason"),
                error=d.get("error"),
                seed=d.get("seed"),
                pruned_at=d.get("pruned_at"),
                elapsed=float(d.get("elapsed", 0.0)),
                threshold=d.get("threshold"),
                server_tokens=d.get("server_tokens"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not a deepconf trace record ({type(exc).__name__}: {exc}); trace files are"
                " written by `deepconf solve --traces` / DeepConf(trace_path=...)"
            ) from exc


@dataclass(slots=True)
class StoredTrace:
    """One line of a trace file: the solve's metadata and the trace."""

    meta: dict[str, Any]
    record: TraceRecord


class TraceWriter:
    """Appends one JSON line per trace and flushes it at once.

    `meta` (problem_id, model, sampling, k, window, formula, ...) is repeated on every
    line so each line replays alone. The file is opened in append mode: several solves
    (an eval run) can share one file, told apart by problem_id.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = {**meta, "formula": meta.get("formula", FORMULA)}
        self._encoder = msgspec.json.Encoder()
        self._file: IO[bytes] | None = None

    def open(self) -> TraceWriter:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
            except OSError as exc:
                raise ConfigError(
                    f"cannot write the trace file {self.path}: {exc}; choose a writable path"
                ) from exc
        return self

    def write(self, record: TraceRecord) -> None:
        """Append `record` as one line and flush, so a crash keeps it. A line that cannot
        be written (a full disk) is a ConfigError: the solve stops rather than go on with
        traces nobody will be able to replay."""
        f = self.open()._file
        assert f is not None
        line = {**self.meta, **record.to_json_dict()}
        try:
            f.write(self._encoder.encode(line) + b"\n")
            f.flush()
        except OSError as exc:
            self._file = None
            with contextlib.suppress(OSError):  # the unwritten line is still buffered
                f.close()
            raise ConfigError(
                f"cannot write the trace file {self.path}: {exc.strerror or exc}; free some"
                " space or choose another path (the lines before this trace are kept)"
            ) from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TraceWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_traces(path: str | Path) -> list[StoredTrace]:
    """Read every trace of a trace file, in file order.

    A last line without its newline is what a crash mid-write leaves; it is skipped with a
    warning. Any other unreadable line raises `ConfigError` naming the line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the trace file {path}: {exc}") from exc
    lines = raw.split(b"\n")
    torn_tail = lines[-1] != b""  # the file did not end with a newline
    out: list[StoredTrace] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and lineno == len(lines):
                warnings.warn(
                    f"{path}: skipped a cut-off last line (a crash mid-write?)", stacklevel=2
                )
                continue
            raise ConfigError(f"{path} line {lineno} is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"{path} line {lineno} is not a JSON object")
        try:
            record = TraceRecord.from_json_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path} line {lineno}: {exc}") from exc
        out.append(StoredTrace(meta={k: d[k] for k in META_KEYS if k in d}, record=record))
    return out
