"""One eval over many machines: `deepconf eval --shard I/N` runs a slice of the dataset on
each, and `deepconf eval-merge OUT SHARD...` joins their folders into one that reads exactly
as a single run's (results.jsonl, traces/, run.json; report, replay and plot read it as is).

Shard I of N holds the problems at 0-based positions p with p % N == I - 1, in dataset order
after --limit. Position rather than a hash of the problem id: every shard gets the same
number of problems give or take one (a hash splits 100 problems 45:55 as readily as 50:50),
a dataset sorted by difficulty is spread evenly, and a problem's shard does not depend on
--limit. It asks every node to read the same dataset in the same order; the manifests check
the dataset's name, and the merge catches what a name cannot: a problem in two shards is
refused, and problems given to a shard without a result are named.

A shard's folder is an ordinary eval folder (resume works as always) whose run.json also
names the shard, plus shard.json: the problem ids it was given, so the merge can say which
are missing. The merged run.json is the unsharded manifest, so `deepconf eval` with the same
settings and `--output OUT` resumes the merged folder: it runs only the missing problems.

    shard = Shard.parse("2/4")
    problems = shard.select(load_dataset(...))       # positions 1, 5, 9, ...
    merged = merge_shards([Path("s1"), Path("s2")], Path("all"))
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from deepconf.errors import ConfigError
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.runner import read_manifest, setting_differences, write_atomic

T = TypeVar("T")
SHARD_FILE = "shard.json"


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as written on the command line
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/4' -> Shard(2, 4); anything else is a ConfigError that shows the form."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        index, count = (int(match[1]), int(match[2])) if match else (0, 0)
        if not 1 <= index <= count:
            raise ConfigError(
                f"--shard {text!r}: write I/N with 1 <= I <= N, e.g. --shard 1/4 on the first"
                " of four machines and --shard 4/4 on the last"
            )
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, problems: Sequence[T]) -> list[T]:
        """The problems at positions index-1, index-1+count, ... (see the module docstring)."""
        return list(problems[self.index - 1 :: self.count])


def record_shard(output: Path, shard: Shard, problems: Sequence[EvalProblem]) -> None:
    """Write shard.json: the shard and the ids it was given, for the merge's missing list.
    Call it after check_manifest, which refuses a folder of another shard."""
    ids = [p.problem_id for p in problems]
    write_atomic(output / SHARD_FILE, json.dumps({"shard": str(shard), "problem_ids": ids}))


# --- merge -------------------------------------------------------------------------------------


@dataclass
class ShardFolder:
    path: Path
    shard: Shard
    manifest: dict[str, Any]  # run.json without the shard: the settings every shard shares
    given: list[str]  # problem ids the shard was given (shard.json)
    lines: list[tuple[str, dict[str, Any]]]  # results.jsonl: (raw line, parsed), in order


@dataclass
class Merged:
    """What eval-merge wrote, and what it could not: problems given to a shard that has no
    result for them (killed or still running), and shards of N not among the folders."""

    manifest: dict[str, Any]
    results: list[dict[str, Any]]
    missing: list[str]
    absent_shards: list[str]


def merge_shards(folders: Sequence[Path], output: Path) -> Merged:
    """Join shard folders into `output` (new or empty), checked first:

    1. every folder is a shard (run.json names one), all shards of the same N, each once;
    2. their settings agree apart from the shard (else the difference is named);
    3. no problem has a result in two folders, and every result's trace files exist.

    The folder is built beside `output` and renamed into place, so a merge cut short
    leaves no half-merged `output`. Raises ConfigError saying what to do."""
    if not folders:
        raise ConfigError("give the shard folders to merge: deepconf eval-merge OUT SHARD...")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} is not an empty folder: give eval-merge a new OUT folder")
    shards = [_read_shard(Path(f)) for f in folders]
    _check_same_run(shards)
    owner: dict[str, Path] = {}
    for folder in shards:
        for _, line in folder.lines:
            pid = line["problem_id"]
            if pid in owner:
                raise ConfigError(
                    f"problem {pid!r} has results in {owner[pid]} and in {folder.path}: the"
                    " shards overlap (run with the same dataset file and order on every"
                    " node); delete one folder's line for it, or rerun the shards"
                )
            owner[pid] = folder.path
    tmp = output.with_name(f".{output.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)  # what a merge killed midway left
    (tmp / "traces").mkdir(parents=True)
    try:
        for folder in shards:
            for _, line in folder.lines:
                _copy_traces(folder.path, line, tmp / "traces")
        text = "".join(raw + "\n" for folder in shards for raw, _ in folder.lines)
        write_atomic(tmp / "results.jsonl", text)
        manifest = shards[0].manifest
        write_atomic(tmp / "run.json", json.dumps(manifest, indent=2, sort_keys=True))
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, output)  # onto a missing or empty folder: atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    given = [pid for folder in shards for pid in folder.given]
    count = shards[0].shard.count
    present = {folder.shard.index for folder in shards}
    return Merged(
        manifest=manifest,
        results=[line for folder in shards for _, line in folder.lines],
        missing=[pid for pid in given if pid not in owner],
        absent_shards=[f"{i}/{count}" for i in range(1, count + 1) if i not in present],
    )


def _read_shard(path: Path) -> ShardFolder:
    if not (path / "run.json").is_file():
        raise ConfigError(f"{path} holds no run.json: give the --output folders of eval --shard")
    manifest = read_manifest(path / "run.json")
    if "shard" not in manifest:
        raise ConfigError(
            f"{path} is not a shard (its run.json names none): eval-merge joins the folders"
            " of `deepconf eval --shard I/N`"
        )
    shard = Shard.parse(str(manifest.pop("shard")))
    try:
        record = json.loads((path / SHARD_FILE).read_text(encoding="utf-8"))
        given = [str(pid) for pid in record["problem_ids"]]
    except (OSError, ValueError, LookupError, TypeError) as exc:
        raise ConfigError(
            f"{path / SHARD_FILE} cannot be read ({exc}): rerun the same `deepconf eval"
            f" --shard {shard}` command there (it resumes, and writes the file again)"
        ) from exc
    return ShardFolder(path, shard, manifest, given, _result_lines(path / "results.jsonl"))


def _result_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A results file's complete lines, read without changing the file (unlike resuming,
    which cuts a cut-off last line): a shard may still be running."""
    if not path.exists():
        return []
    raw = path.read_text(encoding="utf-8")
    whole = raw[: raw.rfind("\n") + 1]  # a cut-off last line is a problem not finished
    lines = []
    for lineno, text in enumerate(whole.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append((text, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} line {lineno} is not valid JSON ({exc}): delete that line and rerun"
                " the shard (its problem is run again), then merge"
            ) from exc
    return lines


def _check_same_run(shards: list[ShardFolder]) -> None:
    """One N, each shard once, and the same settings apart from the shard."""
    first = shards[0]
    seen: dict[int, Path] = {}
    for folder in shards:
        if folder.shard.count != first.shard.count:
            raise ConfigError(
                f"{first.path} is shard {first.shard} and {folder.path} shard {folder.shard}:"
                " merge the shards of one split (the same N on every node)"
            )
        if folder.shard.index in seen:
            raise ConfigError(
                f"shard {folder.shard} is given twice ({seen[folder.shard.index]} and"
                f" {folder.path}): give each shard's folder once"
            )
        seen[folder.shard.index] = folder.path
        diff = setting_differences(first.manifest, folder.manifest)
        if diff:
            shown = "; ".join(
                f"{k}: {a!r} in {first.path}, {b!r} in {folder.path}" for k, a, b in diff[:4]
            )
            raise ConfigError(
                f"the shards were run with other settings ({shown}): merge only shards of one"
                " eval, run with the same flags apart from --shard"
            )


def link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` (no second copy of what may be gigabytes of
    traces), a copy where the file system has no links or they cross devices. A finished
    trace file is never written again (a rerun problem's file is replaced, not appended
    to), so the two names never diverge."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _copy_traces(folder: Path, line: dict[str, Any], traces: Path) -> None:
    """Link the trace files a results line names (one per run: offline, online-low, ...)."""
    for run in line.get("runs", {}).values():
        name = run["trace_file"]
        source = folder / "traces" / name
        if not source.is_file():
            raise ConfigError(
                f"{source} is missing, yet {folder / 'results.jsonl'} has problem"
                f" {line['problem_id']!r}: delete its line there and rerun the shard, then merge"
            )
        link_or_copy(source, traces / name)
