"""`deepconf eval --workers N`: one eval on every core, as N worker processes over shards.

One Python process decodes, scores and votes on one core; at hundreds of streams per problem
the client, not the fleet, then sets the pace. Worker i of N is the same `deepconf eval`
command run as `--shard i/N` into OUT/.workers/i/ with its share of --max-traces, in its own
process (its own core, its own GIL). The parent only watches: it follows each worker's
results.jsonl for the combined progress and, once every worker has exited 0, joins their
folders with eval-merge's own `merge_shards`, so OUT reads as a one-worker run's.

Why processes running the CLI rather than multiprocessing: a worker is then exactly the
command a user could run by hand on another machine, it gets its backend from the same flags
(base URLs, model, API key; without --base-url it loads the bundled model itself), and a
killed worker is just a killed eval whose folder resumes as any eval folder does.

What it deliberately does not do: share one results file between processes (each worker owns
its folder; only the merge writes OUT).

- Sharing the work: a worker runs its own shard (by position, as --shard's) first, then
  takes the problems its siblings have not started, from the end of the list; a problem is
  taken by creating its file in OUT/.workers/claims/ (`Claims`), which one worker alone can
  do. So a worker on a slower core, or one whose problems run longer, does not leave the
  other cores idle at the end. A problem's record does not depend on the worker that ran
  it, so the merged folder still equals a one-worker run's.
- The trace limit: worker i gets floor(L/N) traces at once, plus one for the first L mod N
  workers, so the sum is exactly --max-traces L; N > L is refused. --parallel (problems in
  progress) applies to each worker.
- Resume: OUT stays the one record. Before the workers start, each worker folder is given
  (hard links) the problems of its shard that OUT already holds and no worker folder has,
  and the claims are reset to the finished problems, so a rerun after a kill, a run that
  raises --limit, or --workers on a folder a one-worker run began all run only what is
  missing. After the merge OUT/.workers is removed. OUT/results.jsonl is replaced in one
  rename after the trace files it names are in place: a kill leaves the old file or the new.
- Stopping: a worker that exits non-zero, Ctrl-C or SIGTERM to the parent stops every
  worker (SIGTERM, then SIGKILL after a grace) before the parent exits. A parent killed
  outright (SIGKILL, the OOM killer) cannot stop them, so each worker ends itself when its
  parent goes: no orphan keeps streaming into a folder the next run will use.
- With --shard J/M too (node J of M, N workers on it), worker i runs shard J + M(i-1) of M*N
  of the dataset: the node's shard sliced by position again (positions J-1 + M(i-1) + MN t).

    workers = plan_workers(Path("out"), count=2, max_traces=64, node=None)
    seen = prepare(workers, Path("out"), problems, manifest)
    with workers_running(workers, worker_argv(click_context)) as watch:
        watch(on_result)
    results = merge_into(Path("out"), workers)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import typer

from deepconf.child_processes import (
    Child,
    exit_described,
    fork_child,
    given_flags,
    stop_children,
    terminate_as_interrupt,
    wait_for_an_exit,
)
from deepconf.errors import ConfigError
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.runner import check_manifest, read_manifest, read_results
from deepconf.eval.shards import Shard, link_or_copy, merge_shards

WORKERS_DIR = ".workers"
LOG_NAME = "worker.log"
# Flags the parent sets per worker; every other flag given passes through unchanged.
PER_WORKER = ("workers", "shard", "max_traces", "output", "claims")
CLAIMS_DIR = "claims"  # in OUT/.workers: which problems the workers have taken (Claims)
NODE_FILE = "node.json"  # in the claims folder: the node's problem ids, in order
POLL_S = 0.2  # how often the parent looks at its workers' progress (an exit wakes it at once)
ERROR_LINES = 8  # a failed worker's last log lines shown


@dataclass(frozen=True)
class Worker:
    number: int  # 1-based, of `count`
    count: int
    shard: Shard  # of the whole dataset (after --limit), as `--shard` reads it
    max_traces: int
    folder: Path

    @property
    def name(self) -> str:
        return f"worker {self.number}/{self.count} (--shard {self.shard})"

    def select(self, problems: Sequence[EvalProblem]) -> list[EvalProblem]:
        """This worker's problems among the node's (what its --shard selects of the dataset)."""
        return Shard(self.number, self.count).select(problems)


def split_limit(limit: int, count: int) -> list[int]:
    """Each worker's share of the global trace limit: floor(limit/count), one more for the
    first limit % count workers; the shares sum to `limit` and none is 0."""
    if count < 1:
        raise ConfigError(f"--workers must be at least 1, got {count}")
    if count > limit:
        raise ConfigError(
            f"--workers {count} is more than --max-traces {limit}: the limit is shared by the"
            " workers and each streams at least one trace; raise --max-traces or lower --workers"
        )
    base, extra = divmod(limit, count)
    return [base + (i < extra) for i in range(count)]


def plan_workers(output: Path, count: int, max_traces: int, node: Shard | None) -> list[Worker]:
    """The workers of one eval into `output`; `node` is the eval's own --shard, if any."""
    limits = split_limit(max_traces, count)
    j, m = (node.index, node.count) if node is not None else (1, 1)
    return [
        Worker(
            i,
            count,
            Shard(j + m * (i - 1), m * count),
            limits[i - 1],
            output / WORKERS_DIR / str(i),
        )
        for i in range(1, count + 1)
    ]


# --- before: the worker folders -------------------------------------------------------------


def prepare(
    workers: Sequence[Worker],
    output: Path,
    problems: Sequence[EvalProblem],
    manifest: dict[str, Any],
) -> list[dict[str, Any]]:
    """Give each worker folder its manifest (the eval's, naming its shard) and the finished
    problems of its shard that OUT holds and no worker folder has; set the claims (the
    finished problems taken, every other problem free); return every finished problem's line.

    Refuses worker folders left by a run with another worker count: their shards differ."""
    _check_split(workers, output)
    done = _raw_lines(output / "results.jsonl")
    for worker in workers:
        check_manifest(worker.folder, {**manifest, "shard": str(worker.shard)})
    held = [_raw_lines(worker.folder / "results.jsonl") for worker in workers]
    anywhere = {pid for lines in held for pid in lines}  # a worker may hold another's problem
    node = {p.problem_id for p in problems}
    seen = []
    for worker, have in zip(workers, held, strict=True):
        mine = {p.problem_id for p in worker.select(problems)}
        add = [done[pid] for pid in done if pid in mine and pid not in anywhere]
        for text in add:
            _link_traces(output, json.loads(text), worker.folder)
        if add:
            with (worker.folder / "results.jsonl").open("a", encoding="utf-8") as f:
                f.write("".join(text + "\n" for text in add))
        seen += [json.loads(text) for pid, text in have.items() if pid in node]
        seen += [json.loads(text) for text in add]
    Claims.reset(output / WORKERS_DIR / CLAIMS_DIR, problems, {line["problem_id"] for line in seen})
    return seen


def _check_split(workers: Sequence[Worker], output: Path) -> None:
    root = output / WORKERS_DIR
    count = workers[0].shard.count
    per_node = count // workers[0].count  # M, the number of nodes (1 without --shard)
    for path in sorted(root.glob("*/run.json")):
        shard = read_manifest(path).get("shard")
        if shard is not None and Shard.parse(str(shard)).count != count:
            old = Shard.parse(str(shard)).count // per_node
            raise ConfigError(
                f"{root} holds the unfinished workers of a run with --workers {old}: rerun with"
                f" --workers {old} to finish and merge them, or delete {root} to go on from what"
                f" {output} holds (the problems they finished since are run again)"
            )


def _raw_lines(path: Path) -> dict[str, str]:
    """A results file's lines by problem id, as written (a cut-off last line is cut off, as
    a resume does)."""
    read_results(path)  # validates, and cuts a line a kill left half-written
    if not path.exists():
        return {}
    lines = (t for t in path.read_text(encoding="utf-8").splitlines() if t.strip())
    return {json.loads(text)["problem_id"]: text for text in lines}


def _link_traces(output: Path, line: dict[str, Any], folder: Path) -> None:
    """The trace files of one of OUT's results lines, into a worker folder: hard links (no
    copy of what may be gigabytes), a copy where the file system has none."""
    (folder / "traces").mkdir(parents=True, exist_ok=True)
    for run in line.get("runs", {}).values():
        source = output / "traces" / run["trace_file"]
        target = folder / "traces" / run["trace_file"]
        if not source.is_file():
            raise ConfigError(
                f"{source} is missing, yet {output / 'results.jsonl'} has problem"
                f" {line['problem_id']!r}: delete its line there and rerun to run it again"
            )
        target.unlink(missing_ok=True)  # a killed attempt's partial file
        link_or_copy(source, target)


# --- sharing the work: claims -----------------------------------------------------------------


class Claims:
    """Which of the node's problems a worker has taken, as one file per problem in
    OUT/.workers/claims/ created with O_EXCL: of two workers asking for the same problem,
    exactly one gets it, on any local file system, with no lock and no channel to the parent.

    A worker runs its own shard first and then takes what its siblings have not started,
    from the end of the node's list (the owner works from the front, so the two meet in the
    middle): a worker on a slower core, or with the harder problems (an online method stops
    early on some, not on others), no longer holds the others' cores idle at the end.
    Which worker ran a problem changes nothing in its record: its seeds are the problem's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def reset(folder: Path, problems: Sequence[EvalProblem], finished: set[str]) -> None:
        """Before the workers start: the node's problems in order, the finished ones taken.
        Claims a killed run left for problems it never finished are dropped with the rest."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        ids = [p.problem_id for p in problems]
        (folder / NODE_FILE).write_text(json.dumps(ids), encoding="utf-8")
        for pid in finished:
            Claims(folder).take(pid)

    def take(self, problem_id: str) -> bool:
        """True once for each problem: to the first worker that asks."""
        try:
            os.close(os.open(self._path(problem_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def order(self, every: Sequence[EvalProblem], own: Shard) -> list[EvalProblem]:
        """The problems a worker of shard `own` offers to take, in its order: its shard's,
        then the rest of the node's from the end. `every` is the dataset (after --limit)."""
        try:
            node = set(json.loads((self.folder / NODE_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.folder / NODE_FILE} is unreadable ({exc}): --claims is set by"
                " `eval --workers` for its workers; rerun the parent command"
            ) from exc
        mine = own.select(every)
        taken = {p.problem_id for p in mine}
        others = [p for p in reversed(every) if p.problem_id in node and p.problem_id not in taken]
        return [*mine, *others]

    def _path(self, problem_id: str) -> Path:
        # Problem ids are the dataset's (any text): the file is named by their digest.
        return self.folder / hashlib.sha256(problem_id.encode()).hexdigest()[:32]


# --- during: the processes --------------------------------------------------------------------


def worker_argv(ctx: typer.Context) -> list[str]:
    """The options this eval was given, as flags again, but for those set per worker."""
    return given_flags(ctx, skip=PER_WORKER)


class ResultsFollower:
    """Reads the lines a worker appends to its results file, each once: the combined
    progress needs no channel beyond the file every eval writes anyway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                raw = f.read()
        except FileNotFoundError:
            return []
        whole = raw[: raw.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(whole)
        return [json.loads(text) for text in whole.splitlines() if text.strip()]


@contextlib.contextmanager
def workers_running(
    workers: Sequence[Worker], argv: Sequence[str]
) -> Iterator[Callable[[Callable[[dict[str, Any]], None]], None]]:
    """Start the workers and yield `watch(on_result)`: it passes each newly finished problem
    to `on_result` and returns when all have exited 0. A worker that fails raises a
    ConfigError with its last log lines; it, an interrupt or any other exception first stops
    every worker still running. They start before the caller's progress view does (a
    terminal's bar redraws from a thread, and a parent with threads cannot fork them)."""
    followers = [ResultsFollower(w.folder / "results.jsonl") for w in workers]
    procs: list[Child] = []
    with terminate_as_interrupt(), contextlib.ExitStack() as logs:
        try:
            for worker in workers:
                log = logs.enter_context((worker.folder / LOG_NAME).open("wb"))
                procs.append(_start(worker, argv, log))
            yield lambda on_result: _watch(workers, procs, followers, on_result)
        finally:
            stop_children(procs)


def _watch(
    workers: Sequence[Worker],
    procs: Sequence[Child],
    followers: Sequence[ResultsFollower],
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Poll until every worker has exited 0 (exits are read before results, so a worker's
    last lines are passed on before its exit counts); raise on the first that failed."""
    while True:
        codes = [p.poll() for p in procs]
        for follower in followers:
            for line in follower.new_lines():
                on_result(line)
        failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None:
            raise _failure(workers[failed], codes[failed])
        if all(code == 0 for code in codes):
            return
        wait_for_an_exit(procs, POLL_S)


def _start(worker: Worker, argv: Sequence[str], log: IO[bytes]) -> Child:
    own = ["--shard", str(worker.shard), "--max-traces", str(worker.max_traces)]
    claims = worker.folder.parent / CLAIMS_DIR
    args = ["eval", *argv, *own, "--claims", str(claims), "--output", str(worker.folder)]
    return fork_child(args, log, name=f"deepconf {worker.shard}")


def _failure(worker: Worker, code: int | None) -> ConfigError:
    how = exit_described(code)
    log = worker.folder / LOG_NAME
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-ERROR_LINES:]
    said = "\n".join(f"  {line}" for line in tail) or "  (nothing)"
    return ConfigError(
        f"{worker.name} {how}; the other workers were stopped. Its last lines ({log}):\n"
        f"{said}\nFix the cause and rerun the same command to resume: finished problems are kept"
    )


# --- after: the merge ---------------------------------------------------------------------------


def merge_into(output: Path, workers: Sequence[Worker]) -> list[dict[str, Any]]:
    """Join the worker folders as eval-merge does, move the result into OUT, and remove
    OUT/.workers; return the merged results lines. OUT's lines for problems outside this
    run (a smaller --limit now) are kept after the merged ones, as one worker keeps them.
    Trace files go first and results.jsonl last, each by rename, so OUT never names a trace
    file it lacks."""
    root = output / WORKERS_DIR
    staging = root / "merged"
    shutil.rmtree(staging, ignore_errors=True)
    merged = merge_shards([w.folder for w in workers], staging)
    if merged.missing:
        raise ConfigError(
            f"the workers exited without results for {len(merged.missing)} problem(s), e.g."
            f" {merged.missing[0]!r} (see the logs in {root}): rerun the same command to run them"
        )
    ours = {line["problem_id"] for line in merged.results}
    others = [text for pid, text in _raw_lines(output / "results.jsonl").items() if pid not in ours]
    if others:
        with (staging / "results.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(text + "\n" for text in others))
    (output / "traces").mkdir(parents=True, exist_ok=True)
    for path in sorted((staging / "traces").iterdir()):
        os.replace(path, output / "traces" / path.name)
    os.replace(staging / "results.jsonl", output / "results.jsonl")
    shutil.rmtree(root)
    return merged.results
