"""Trace records and JSONL trace files: round trips, incremental writes, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Pinned by mutation testing (.ci/mutation): each test below failed on a mutant of
# deepconf/trace.py that every test above let through.


def test_to_json_dict_writes_every_field_exactly() -> None:
    """Every field goes to the file under its own name; elapsed is rounded to 4 decimals
    and token confidences only when asked for."""
    rec = TraceRecord(
        index=7,
        phase="warmup",
        status=TraceStatus.TRUNCATED,
        tokens=3,
        token_confs=np.array([1.234567, 2.0, 3.00004]),
        text="t",
        reasoning="r",
        answer="42",
        metrics=None,
        finish_reason="length",
        error="boom",
        seed=9,
        pruned_at=None,
        elapsed=0.123456,
        threshold=None,
        server_tokens=4,
    )
    want = {
        "index": 7,
        "phase": "warmup",
        "status": "truncated",
        "tokens": 3,
        "answer": "42",
        "metrics": None,
        "threshold": None,
        "pruned_at": None,
        "finish_reason": "length",
        "error": "boom",
        "seed": 9,
        "elapsed": 0.1235,
        "server_tokens": 4,
        "text": "t",
        "reasoning": "r",
    }
    assert rec.to_json_dict(token_confs=False) == want
    assert rec.to_json_dict() == {**want, "token_confs": [1.2346, 2.0, 3.0]}
    back = TraceRecord.from_json_dict(json.loads(json.dumps(rec.to_json_dict())))
    assert (back.finish_reason, back.error, back.server_tokens, back.elapsed) == (
        "length",
        "boom",
        4,
        0.1235,
    )
    assert back.status is TraceStatus.TRUNCATED and back.metrics is None


def test_from_json_dict_fills_what_a_line_leaves_out() -> None:
    """Only index, phase, status and tokens are required; the rest default as a fresh
    record's do (an empty float64 confidence array, empty texts, no answer, 0 s)."""
    rec = TraceRecord.from_json_dict(
        {"index": "1", "phase": "online", "status": "pruned", "tokens": "3", "model": "m"}
    )
    assert (rec.index, rec.phase, rec.status, rec.tokens) == (1, "online", TraceStatus.PRUNED, 3)
    assert rec.token_confs.dtype == np.float64 and rec.token_confs.shape == (0,)
    assert (rec.text, rec.reasoning, rec.answer, rec.metrics) == ("", "", None, None)
    assert (rec.finish_reason, rec.error, rec.seed, rec.pruned_at) == (None, None, None, None)
    assert (rec.elapsed, rec.threshold, rec.server_tokens) == (0.0, None, None)
    line = {"index": 1, "phase": "online", "status": "pruned", "tokens": 2, "token_confs": [1, 2]}
    assert TraceRecord.from_json_dict(line).token_confs.dtype == np.float64  # ints in a file


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        ({"index": 1, "phase": "online", "status": "paused", "tokens": 3}, "ValueError"),
        ({"index": 1, "phase": "online", "tokens": 3}, "KeyError"),
        (
            {"index": 1, "phase": "online", "status": "pruned", "tokens": 3, "metrics": {"x": 1}},
            "TypeError",
        ),
    ],
    ids=["unknown-status", "no-status", "bad-metrics"],
)
def test_from_json_dict_refuses_a_line_that_is_no_record(line: dict, cause: str) -> None:
    with pytest.raises(ConfigError) as info:
        TraceRecord.from_json_dict(line)
    assert str(info.value).startswith(f"not a deepconf trace record ({cause}: ")
    assert str(info.value).endswith(
        "; trace files are written by `deepconf solve --traces` / DeepConf(trace_path=...)"
    )


def test_writer_makes_missing_folders_keeps_a_given_formula_and_reopens(tmp_path) -> None:
    """The trace file's folders are created; a formula in the metadata is kept (else the
    current one is recorded); close() twice is harmless and a later write appends."""
    path = tmp_path / "a" / "b" / "t.jsonl"
    writer = TraceWriter(path, {**META, "formula": "older_formula"})
    writer.write(_record(0))
    handle = writer._file
    writer.close()
    assert handle is not None and handle.closed
    writer.close()
    writer.write(_record(1))
    writer.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [d["index"] for d in lines] == [0, 1]
    assert {d["formula"] for d in lines} == {"older_formula"}
    assert TraceWriter(path, META).meta["formula"] == FORMULA


def test_an_unwritable_trace_path_is_a_config_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        ConfigError, match=r"^cannot write the trace file .*choose a writable path$"
    ):
        TraceWriter(blocker / "t.jsonl", META).open()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_is_a_config_error_and_the_writer_closes_quietly() -> None:
    """/dev/full opens but refuses every write (ENOSPC), as a full disk does: the write is
    a ConfigError that says so and what to do, and closing afterwards raises nothing (the
    unwritten line is not flushed a second time)."""
    writer = TraceWriter("/dev/full", META).open()
    with pytest.raises(ConfigError) as info:
        writer.write(_record(0))
    assert str(info.value) == (
        "cannot write the trace file /dev/full: No space left on device; free some space or"
        " choose another path (the lines before this trace are kept)"
    )
    assert isinstance(info.value.__cause__, OSError)
    writer.close()


def test_read_traces_skips_blank_lines_and_keeps_only_the_solve_metadata(tmp_path) -> None:
    """Blank lines are skipped; `meta` holds exactly the solve's keys present on the line
    (never the trace's own fields or unknown extras); a complete last line without its
    newline is read, not dropped."""
    line = {**META, "extra": 1, **_record(0).to_json_dict()}
    path = tmp_path / "t.jsonl"
    path.write_text("\n  \n" + json.dumps(line) + "\n\n" + json.dumps({**line, "index": 1}))
    stored = read_traces(path)
    assert [s.record.index for s in stored] == [0, 1]
    assert stored[0].meta == META


def test_read_traces_names_the_line_and_the_problem(tmp_path) -> None:
    """A line that is JSON but not an object, or a damaged line before a torn tail, is an
    error naming its line (a torn tail excuses only itself); a missing file says so."""
    path = tmp_path / "t.jsonl"
    good = json.dumps({**META, **_record(0).to_json_dict()})
    path.write_text(good + "\n[1, 2]\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl line 2 is not a JSON object$"):
        read_traces(path)
    path.write_text(good + "\n{not json\n" + good[:20])
    with pytest.raises(ConfigError, match=r"t\.jsonl line 2 is not valid JSON: "):
        read_traces(path)
    with pytest.raises(ConfigError, match=r"^cannot read the trace file .*missing\.jsonl"):
        read_traces(tmp_path / "missing.jsonl")


def test_a_cut_off_last_line_after_a_blank_line_is_still_a_torn_tail(tmp_path) -> None:
    """Only the file's end decides what a torn tail is: a cut-off last line is skipped with
    a warning whatever precedes it, here a blank line."""
    path = tmp_path / "t.jsonl"
    good = json.dumps({**META, **_record(0).to_json_dict()})
    path.write_text(good + "\n\n" + good[:20])
    with pytest.warns(UserWarning, match="skipped a cut-off last line"):
        stored = read_traces(path)
    assert [s.record.index for s in stored] == [0]
