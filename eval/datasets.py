"""Evaluation datasets: a built-in task family or a user file, as a list of `EvalProblem`s.

A dataset spec is either a built-in task (`chain:difficulty=s6d2,count=100,seed=0`, drawn
from the task family's TEST split) or a path to a JSONL, JSON (a list of objects), CSV or
Parquet file whose rows have a problem field (`problem`, `question` or `prompt`) and an
`answer` field. This module only reads and formats; it runs nothing and grades nothing.

    template = "{problem}\\nPut the final answer in \\boxed{{}}."
    problems = load_dataset("aime25.jsonl", prompt_template=template)
    problems[0].problem_id, problems[0].prompt, problems[0].answer
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepconf.errors import ConfigError, DatasetError

PROBLEM_FIELDS: tuple[str, ...] = ("problem", "question", "prompt")
ID_FIELDS: tuple[str, ...] = ("id", "problem_id", "unique_id", "uid")
ANSWER_FIELD = "answer"
BUILTIN_TASKS: tuple[str, ...] = ("chain",)


@dataclass(frozen=True, slots=True)
class EvalProblem:
    """One problem: a stable id (results and trace files are keyed by it), the problem text,
    the prompt sent to the model (the text through --prompt-template) and the gold answer."""

    problem_id: str
    problem: str
    prompt: str
    answer: str


def load_dataset(spec: str, prompt_template: str | None = None) -> list[EvalProblem]:
    """The problems of a built-in task spec or a dataset file, prompts formatted.

    Raises DatasetError when the file cannot be read, a row lacks a field, ids repeat, or
    the template does not format.
    """
    name = spec.split(":", 1)[0]
    if name in BUILTIN_TASKS and not Path(spec).exists():
        rows = _builtin(spec)
    else:
        rows = _read_file(Path(spec))
    problems = [_format(p, prompt_template) for p in rows]
    if not problems:
        raise DatasetError(f"dataset {spec!r} has no problems")
    seen: set[str] = set()
    for p in problems:
        if p.problem_id in seen:
            raise DatasetError(
                f"dataset {spec!r} repeats the id {p.problem_id!r}: results are keyed by id,"
                " so give every row a unique 'id' (or drop the id column to number rows)"
            )
        seen.add(p.problem_id)
    return problems


# LaTeX commands that begin with "n": a "\\n" that starts one of these is not a newline.
_LATEX_N = re.compile(
    r"\\n(?!(?:eq|e|u|abla|eg|ot|otin|ewline|i|mid|atural|leq|geq|exists|cong|subseteq"
    r"|supseteq|parallel|ewcommand)(?![A-Za-z]))"
)


def template_from_cli(text: str) -> str:
    """A template typed on the command line: the two characters "\\n" become a newline (a
    shell's double quotes keep them literal), except where they begin a LaTeX command such
    as \\neq or \\nu."""
    return _LATEX_N.sub("\n", text)


def _format(p: EvalProblem, template: str | None) -> EvalProblem:
    if template is None:
        return p
    try:
        prompt = template.format(problem=p.problem)
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(
            f"--prompt-template {template!r} does not format: {exc!r}; it may only use"
            " {problem}, and literal braces must be doubled ({{}})"
        ) from exc
    return EvalProblem(p.problem_id, p.problem, prompt, p.answer)


# --- built-in task family ------------------------------------------------------------------


def parse_builtin(spec: str) -> tuple[str, dict[str, str]]:
    """'chain:difficulty=s6d2,count=100' -> ('chain', {'difficulty': 's6d2', 'count': '100'})."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DatasetError(
                f"built-in dataset {spec!r}: {part!r} is not key=value; write e.g."
                " chain:difficulty=s6d2,count=100,seed=0"
            )
        params[key.strip()] = value.strip()
    return name, params


def _builtin(spec: str) -> list[EvalProblem]:
    from deepconf.eval import task_chain

    _, params = parse_builtin(spec)
    allowed = {"difficulty", "steps", "digits", "count", "seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DatasetError(
            f"built-in dataset {spec!r}: unknown key(s) {unknown}; use difficulty=s<steps>d<digits>"
            " (or steps= and digits=), count= and seed="
        )
    try:
        count = int(params.get("count", "100"))
        seed = int(params.get("seed", "0"))
        if "difficulty" in params:
            difficulty = task_chain.Difficulty.parse(params["difficulty"])
        else:
            difficulty = task_chain.Difficulty(
                int(params.get("steps", "6")), int(params.get("digits", "2"))
            )
    except (ValueError, ConfigError) as exc:
        raise DatasetError(f"built-in dataset {spec!r}: {exc}") from exc
    if count < 1 or seed < 0:
        raise DatasetError(f"built-in dataset {spec!r}: count must be >= 1 and seed >= 0")
    # The TEST split only: the bundled model never saw these texts in training.
    drawn = task_chain.problems(difficulty, count, split="test", start=seed)
    return [EvalProblem(p.problem_id, p.expression, p.expression, str(p.answer)) for p in drawn]


# --- files ---------------------------------------------------------------------------------


def _read_file(path: Path) -> list[EvalProblem]:
    if not path.exists():
        raise DatasetError(
            f"dataset {str(path)!r} is neither a file nor a built-in task"
            f" ({', '.join(BUILTIN_TASKS)}:key=value,...)"
        )
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
    if suffix not in readers:
        raise DatasetError(
            f"dataset {path}: unknown extension {suffix!r}; use .jsonl, .json, .csv or .parquet"
        )
    try:
        rows = readers[suffix](path)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    return [_row(path, i, row) for i, row in enumerate(rows)]


def _row(path: Path, i: int, row: Any) -> EvalProblem:
    where = f"dataset {path} row {i + 1}"
    if not isinstance(row, dict):
        raise DatasetError(f"{where} is not an object with problem and answer fields")
    problem = next((row[f] for f in PROBLEM_FIELDS if _present(row.get(f))), None)
    if problem is None:
        raise DatasetError(
            f"{where} has no problem field: name it one of {', '.join(PROBLEM_FIELDS)}"
            f" (found: {', '.join(map(str, row)) or 'nothing'})"
        )
    if not _present(row.get(ANSWER_FIELD)):
        raise DatasetError(f"{where} has no '{ANSWER_FIELD}' field (the gold answer to grade by)")
    ident = next((row[f] for f in ID_FIELDS if _present(row.get(f))), None)
    problem_id = str(ident) if ident is not None else f"{path.stem}:{i}"
    text = str(problem)
    return EvalProblem(problem_id, text, text, _answer_text(row[ANSWER_FIELD]))


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _answer_text(value: Any) -> str:
    # 42.0 from a CSV or Parquet float column is the integer answer 42.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _jsonl(path: Path) -> Iterable[Any]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"dataset {path} line {lineno} is not valid JSON: {exc}") from exc
    return rows


def _json(path: Path) -> Iterable[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetError(
            f"dataset {path} must hold a JSON list of objects (for one object per line, name"
            " the file .jsonl)"
        )
    return data


def _csv(path: Path) -> Iterable[Any]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _parquet(path: Path) -> Iterable[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetError(
            "reading Parquet needs pyarrow: pip install 'deepconf-orchestrator[parquet]'"
            " (or convert the file to JSONL)"
        ) from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own ArrowInvalid etc.
        raise DatasetError(f"cannot read Parquet dataset {path}: {exc}") from exc


def load_answers(spec: str) -> dict[str, str]:
    """Gold answers by problem id, for replay: an eval output folder (or its results.jsonl),
    or any dataset spec `load_dataset` reads (the ids then match an eval run of that spec)."""
    path = Path(spec)
    if path.is_dir():
        path = path / "results.jsonl"
        if not path.exists():
            raise DatasetError(f"{spec} has no results.jsonl: pass an eval --output folder")
    if path.name == "results.jsonl" and path.exists():
        golds = {}
        text = path.read_text(encoding="utf-8")
        # A cut-off last line (a run killed mid-write) holds no finished problem.
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        for line in filter(str.strip, lines):
            row = json.loads(line)
            if isinstance(row, dict) and "problem_id" in row and "gold" in row:
                golds[str(row["problem_id"])] = str(row["gold"])
        return golds
    return {p.problem_id: p.answer for p in load_dataset(spec)}
