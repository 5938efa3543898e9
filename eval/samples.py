"""Answer-only samples: replay stop rules on any logged samples, not only deepconf's traces.

A samples file is JSONL, one sample per line, with no confidences:

    {"problem_id": "aime25-3", "answer": "204", "tokens": 9120}

`answer` may be null (no answer was extracted); `tokens` is the sample's length, which the
token counts of replay add up. Samples of a problem keep their file order (the "own order"
of a replay; resampled orders permute it). Gold answers come from a JSONL file of
`{"problem_id": ..., "answer": ...}` lines (`load_gold_file`), or anything eval.datasets
reads. Only rules that need no confidence replay on such pools (Policy.needs_confidence).

    pools = load_samples("samples.jsonl")
    golds = load_gold_file("gold.jsonl")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepconf.errors import ConfigError
from deepconf.eval.replay import Pool, PoolTrace

__all__ = ["is_gold_file", "is_samples_file", "load_gold_file", "load_samples"]

_EMPTY = np.zeros(0)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {lineno} is not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{path} line {lineno} is not a JSON object")
        rows.append((lineno, row))
    return rows


def _first_row(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return row if isinstance(row, dict) else None
    return None


def is_samples_file(path: Path) -> bool:
    """Whether a file reads as answer-only samples (a trace file's lines have a status)."""
    row = _first_row(path)
    return (
        row is not None
        and {"problem_id", "answer", "tokens"} <= row.keys()
        and ("status" not in row)
    )


def is_gold_file(spec: str) -> bool:
    """Whether --answers names a JSONL file of {"problem_id", "answer"} lines."""
    row = _first_row(Path(spec))
    return row is not None and {"problem_id", "answer"} <= row.keys() and "tokens" not in row


def load_samples(paths: list[Path]) -> dict[str, Pool]:
    """Pools of answer-only samples by problem id, each in file order."""
    pools: dict[str, Pool] = {}
    for path in paths:
        for lineno, row in _rows(path):
            where = f"{path} line {lineno}"
            pid, answer, tokens = row.get("problem_id"), row.get("answer"), row.get("tokens")
            if pid is None or "answer" not in row or tokens is None:
                raise ConfigError(
                    f'{where}: a sample needs "problem_id", "answer" (null for none) and "tokens"'
                )
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise ConfigError(f'{where}: "tokens" must be a whole number >= 0, got {tokens!r}')
            if answer is not None and not isinstance(answer, str | int | float):
                raise ConfigError(f'{where}: "answer" must be a string, a number or null')
            pool = pools.setdefault(str(pid), Pool(str(pid), [], {"answer_only": True}))
            raw = None if answer is None else str(answer)
            pool.traces.append(PoolTrace(raw, _EMPTY, n_tokens=tokens))
    if not pools:
        raise ConfigError(f"no samples in {', '.join(map(str, paths))}")
    return pools


def load_gold_file(spec: str) -> dict[str, str]:
    """Gold answers by problem id from {"problem_id", "answer"} lines."""
    golds = {}
    for lineno, row in _rows(Path(spec)):
        if "problem_id" not in row or row.get("answer") is None:
            raise ConfigError(f'{spec} line {lineno}: a gold line needs "problem_id" and "answer"')
        golds[str(row["problem_id"])] = str(row["answer"])
    return golds
