"""Dataset loading: every file format, the built-in task family, templates, clear errors."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import pytest

from deepconf.errors import DatasetError
from deepconf.eval import task_chain
from deepconf.eval.datasets import load_answers, load_dataset, parse_builtin, template_from_cli

ROWS = [
    {"id": "a", "problem": "1+1", "answer": "2"},
    {"id": "b", "question": "2+2", "answer": 4},
    {"id": "c", "prompt": "3+3", "answer": 6},
]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            fields = sorted({k for r in rows for k in r})
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_each_format_reads_the_same_problems(tmp_path: Path, suffix: str) -> None:
    """JSONL, JSON and CSV give the same ids, texts and answers; the problem may be named
    problem, question or prompt; numbers become answer strings."""
    problems = load_dataset(str(write(tmp_path / f"d{suffix}", ROWS)))
    assert [(p.problem_id, p.problem, p.answer) for p in problems] == [
        ("a", "1+1", "2"),
        ("b", "2+2", "4"),
        ("c", "3+3", "6"),
    ]


def test_parquet_reads_when_pyarrow_is_there(tmp_path: Path) -> None:
    """Parquet files load through pyarrow (the 'parquet' extra)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"question": "5+5", "answer": "10"}]), tmp_path / "d.parquet"
    )
    [p] = load_dataset(str(tmp_path / "d.parquet"))
    assert (p.problem_id, p.problem, p.answer) == ("d:0", "5+5", "10")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    """Without pyarrow, reading Parquet fails with the install command."""
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DatasetError, match=r"pip install 'deepconf-orchestrator\[parquet\]'"):
        load_dataset(str(tmp_path / "d.parquet"))


def test_prompt_template_formats_and_bad_templates_fail(tmp_path: Path) -> None:
    """The template wraps the problem (doubled braces are literal); unknown fields fail."""
    path = str(write(tmp_path / "d.jsonl", ROWS))
    [p, *_] = load_dataset(path, "{problem}\nPut the final answer in \\boxed{{}}.")
    assert p.prompt == "1+1\nPut the final answer in \\boxed{}." and p.problem == "1+1"
    with pytest.raises(DatasetError, match="prompt-template"):
        load_dataset(path, "{question}")


def test_rows_without_needed_fields_or_with_repeated_ids_fail(tmp_path: Path) -> None:
    """Missing problem or answer fields and duplicate ids are errors naming the row."""
    with pytest.raises(DatasetError, match="row 1 has no problem field"):
        load_dataset(str(write(tmp_path / "a.jsonl", [{"text": "x", "answer": 1}])))
    with pytest.raises(DatasetError, match="no 'answer' field"):
        load_dataset(str(write(tmp_path / "b.jsonl", [{"problem": "x"}])))
    with pytest.raises(DatasetError, match="repeats the id"):
        load_dataset(str(write(tmp_path / "c.jsonl", [ROWS[0], ROWS[0]])))
    with pytest.raises(DatasetError, match="line 1 is not valid JSON"):
        (tmp_path / "d.jsonl").write_text("{nope\n")
        load_dataset(str(tmp_path / "d.jsonl"))
    with pytest.raises(DatasetError, match="neither a file nor a built-in"):
        load_dataset(str(tmp_path / "missing.jsonl"))


def test_float_answers_that_are_integers_read_as_integers(tmp_path: Path) -> None:
    """A JSON/Parquet float column gives 6.0 for the answer 6: it reads as "6"."""
    [p] = load_dataset(str(write(tmp_path / "f.json", [{"problem": "x", "answer": 6.0}])))
    assert p.answer == "6"


def test_rows_without_ids_are_numbered(tmp_path: Path) -> None:
    """Rows without an id get <file stem>:<row>, stable across runs (resume keys on it)."""
    rows = [{"problem": "x", "answer": "1"}, {"problem": "y", "answer": "2"}]
    assert [p.problem_id for p in load_dataset(str(write(tmp_path / "s.jsonl", rows)))] == [
        "s:0",
        "s:1",
    ]


def test_builtin_chain_draws_the_test_split() -> None:
    """chain:... gives count problems of the TEST split at that difficulty, answers exact."""
    problems = load_dataset("chain:difficulty=s3d2,count=4,seed=5")
    expected = task_chain.problems(task_chain.Difficulty(3, 2), 4, split="test", start=5)
    assert [p.problem for p in problems] == [q.expression for q in expected]
    assert [p.answer for p in problems] == [str(q.answer) for q in expected]
    assert all(":test:" in p.problem_id for p in problems)
    assert load_dataset("chain:steps=3,digits=2,count=4,seed=5") == problems
    assert parse_builtin("chain:count=3") == ("chain", {"count": "3"})


def test_builtin_spec_errors_are_clear() -> None:
    """Unknown keys, malformed parts and bad difficulties are DatasetErrors."""
    with pytest.raises(DatasetError, match="unknown key"):
        load_dataset("chain:level=3")
    with pytest.raises(DatasetError, match="not key=value"):
        load_dataset("chain:count")
    with pytest.raises(DatasetError, match="s<steps>d<digits>"):
        load_dataset("chain:difficulty=hard")


def test_answers_come_from_results_or_a_dataset(tmp_path: Path) -> None:
    """Gold answers load from an eval folder's results (a cut-off last line ignored) or
    from a dataset spec."""
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"problem_id": "a", "gold": "2"}) + "\n" + '{"problem_id": "b", "go'
    )
    assert load_answers(str(tmp_path)) == {"a": "2"}
    path = write(tmp_path / "d.jsonl", ROWS)
    assert load_answers(str(path)) == {"a": "2", "b": "4", "c": "6"}


def test_cli_template_newlines_but_not_latex() -> None:
    """A typed \\n becomes a newline; \\neq and \\nu (LaTeX) stay as they are."""
    typed = "{problem}\\nPut the final answer in \\boxed{{}}; use \\neq and \\nu."
    assert template_from_cli(typed) == (
        "{problem}\nPut the final answer in \\boxed{{}}; use \\neq and \\nu."
    )
    assert template_from_cli("a\\nnote") == "a\nnote"
