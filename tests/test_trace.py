"""Trace records and JSONL trace files: round trips, incremental writes, damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepconf.confidence import TraceMetrics
from deepconf.errors import ConfigError
from deepconf.trace import FORMULA, TraceRecord, TraceStatus, TraceWriter, read_traces

META = {
    "problem_id": "p1",
    "model": "fake-model",
    "sampling": {"temperature": 0.6, "seed": 3},
    "k": 20,
    "window": 16,
}


def _record(index: int, status: TraceStatus = TraceStatus.COMPLETED) -> TraceRecord:
    rng = np.random.default_rng(index)
    confs = rng.uniform(5, 20, size=50)
    return TraceRecord(
        index=index,
        phase="online",
        status=status,
        tokens=50,
        token_confs=confs,
        text=f"so \\boxed{{{index}}}",
        reasoning="hmm",
        answer=str(index),
        metrics=TraceMetrics(mean=12.5, tail=13.0, bottom=8.25, lowest=7.5),
        finish_reason="stop",
        seed=3 + index,
        pruned_at=40 if status is TraceStatus.PRUNED else None,
        elapsed=0.25,
        threshold=11.0,
    )


def test_record_round_trips_through_json_with_confs_rounded_to_4_decimals() -> None:
    """from_json_dict(to_json_dict(r)) keeps every field; token confidences come back within
    the 4-decimal rounding of the file, and nothing else is rounded."""
    rec = _record(3, TraceStatus.PRUNED)
    d = json.loads(json.dumps(rec.to_json_dict()))
    back = TraceRecord.from_json_dict(d)
    np.testing.assert_allclose(back.token_confs, rec.token_confs, atol=5e-5, rtol=0)
    assert d["token_confs"] == [round(float(c), 4) for c in rec.token_confs]
    assert back.metrics == rec.metrics
    assert back.status is TraceStatus.PRUNED
    for name in ("index", "phase", "tokens", "text", "reasoning", "answer", "seed", "pruned_at"):
        assert getattr(back, name) == getattr(rec, name), name
    assert back.threshold == 11.0


def test_writer_flushes_each_record_before_the_next_is_written(tmp_path) -> None:
    """Each write() is on disk at once (a crash loses no finished trace), one line per trace,
    and every line carries the replay metadata."""
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, META) as writer:
        for i in range(3):
            writer.write(_record(i))
            lines = path.read_text().splitlines()
            assert len(lines) == i + 1
    for line in lines:
        d = json.loads(line)
        assert d["problem_id"] == "p1" and d["model"] == "fake-model"
        assert d["k"] == 20 and d["window"] == 16 and d["formula"] == FORMULA
        assert d["sampling"]["seed"] == 3


def test_read_traces_returns_records_and_meta_in_file_order(tmp_path) -> None:
    """read_traces gives back what was written, with the solve metadata split off; files are
    appended to, so two solves in one file both come back."""
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, META) as w:
        w.write(_record(0))
    with TraceWriter(path, {**META, "problem_id": "p2"}) as w:
        w.write(_record(1, TraceStatus.FAILED))
    stored = read_traces(path)
    assert [s.record.index for s in stored] == [0, 1]
    assert [s.meta["problem_id"] for s in stored] == ["p1", "p2"]
    assert stored[1].record.status is TraceStatus.FAILED
    assert stored[0].meta["formula"] == FORMULA
    assert "token_confs" not in stored[0].meta


def test_cut_off_last_line_is_skipped_with_a_warning(tmp_path) -> None:
    """A crash mid-write leaves a last line without newline: it is dropped with a warning
    and the finished traces before it are kept."""
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, META) as w:
        w.write(_record(0))
        w.write(_record(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.warns(UserWarning, match="cut-off"):
        stored = read_traces(path)
    assert [s.record.index for s in stored] == [0]


def test_damaged_middle_line_raises_config_error_naming_the_line(tmp_path) -> None:
    """A bad line that is not the torn tail is an error with its line number, not skipped."""
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, META) as w:
        w.write(_record(0))
    path.write_text("{not json\n" + path.read_text())
    with pytest.raises(ConfigError, match="line 1"):
        read_traces(path)
    path.write_text('{"index": 1}\n')
    with pytest.raises(ConfigError, match=r"line 1.*not a deepconf trace record"):
        read_traces(path)
