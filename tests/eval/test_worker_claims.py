"""eval --workers shares the work (eval/workers.py Claims): a problem is taken once, by the
first worker to ask, however many ask at once; a worker offers its own shard first and
then the node's other problems from the end; the claims are reset to the finished problems
before the workers start; a problem one worker took from another's shard in a killed run
is not given to a worker folder a second time. The end-to-end runs (the work shared under
a stall, a kill, resume) are in test_workers.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepconf.cli import app
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.shards import Shard
from deepconf.eval.workers import CLAIMS_DIR, WORKERS_DIR, Claims, plan_workers, prepare


def problems(k: int) -> list[EvalProblem]:
    return [EvalProblem(f"d:{i}", f"q {i}", f"q {i}", str(i)) for i in range(k)]


def ids(chosen: list[EvalProblem]) -> list[int]:
    return [int(p.problem_id.split(":")[1]) for p in chosen]


def test_a_problem_is_taken_once_and_a_reset_keeps_only_the_finished(tmp_path: Path) -> None:
    """take() is True for the first ask alone; reset() drops what a killed run had taken
    but never finished, and marks the finished problems taken. Ids are any text."""
    folder = tmp_path / "claims"
    Claims.reset(folder, problems(3), finished={"d:1"})
    claims = Claims(folder)
    assert [claims.take("d:0"), claims.take("d:0"), claims.take("d:1")] == [True, False, False]
    assert claims.take("a/b c:\u00e9") and not claims.take("a/b c:\u00e9")
    Claims.reset(folder, problems(3), finished={"d:1"})
    assert [claims.take("d:0"), claims.take("d:1"), claims.take("d:2")] == [True, False, True]


def test_of_many_asking_at_once_exactly_one_takes_a_problem(tmp_path: Path) -> None:
    """16 threads released together ask for the same 50 problems: each problem goes to
    exactly one of them (O_EXCL, whatever the interleaving)."""
    folder = tmp_path / "claims"
    Claims.reset(folder, problems(50), finished=set())
    start = threading.Barrier(16)
    won: list[list[str]] = [[] for _ in range(16)]

    def ask(i: int) -> None:
        claims = Claims(folder)
        start.wait()
        won[i] = [p.problem_id for p in problems(50) if claims.take(p.problem_id)]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [pid for each in won for pid in each]
    assert sorted(taken) == sorted(p.problem_id for p in problems(50))


def test_a_worker_offers_its_shard_first_then_the_node_from_the_end(tmp_path: Path) -> None:
    """Shard 2/3 of 7: its own 1, 4, then 6, 5, 3, 2, 0. Node 1 of 2 with two workers
    (shards 1/4 and 3/4): worker 2 offers 2, 6, then 4, 0 and never the other node's."""
    every = problems(7)
    folder = tmp_path / "claims"
    Claims.reset(folder, every, finished=set())
    assert ids(Claims(folder).order(every, Shard(2, 3))) == [1, 4, 6, 5, 3, 2, 0]
    Claims.reset(folder, Shard(1, 2).select(every), finished=set())
    assert ids(Claims(folder).order(every, Shard(3, 4))) == [2, 6, 4, 0]
    assert ids(Claims(folder).order(every, Shard(1, 4))) == [0, 4, 6, 2]


def test_a_claims_folder_without_its_node_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--claims is set by `eval --workers` for its workers"):
        Claims(tmp_path / "nowhere").order(problems(2), Shard(1, 2))


def line(pid: str, trace: str) -> str:
    return json.dumps({"problem_id": pid, "runs": {"offline": {"trace_file": trace}}})


def test_a_problem_taken_across_shards_is_not_given_twice(tmp_path: Path) -> None:
    """A killed run left d:0 (worker 1's shard) finished in worker 2's folder; OUT holds d:0
    and d:2 from an earlier one-worker run. prepare gives worker 1 only d:2 (d:0 would
    then be in two folders, which the merge refuses), counts d:0 once, and leaves it
    taken: neither worker runs it again."""
    out = tmp_path / "out"
    workers = plan_workers(out, 2, 4, None)
    manifest = {"settings": 1}
    (out / "traces").mkdir(parents=True)
    for name in ("d0.jsonl", "d2.jsonl"):
        (out / "traces" / name).write_text("{}\n")
    (out / "results.jsonl").write_text(
        line("d:0", "d0.jsonl") + "\n" + line("d:2", "d2.jsonl") + "\n"
    )
    w2 = workers[1].folder
    prepare(workers, out, problems(4), manifest)  # the folders and their run.json
    (w2 / "traces").mkdir()
    (w2 / "traces" / "d0.jsonl").write_text("{}\n")
    w1_lines = (workers[0].folder / "results.jsonl").read_text()
    (workers[0].folder / "results.jsonl").write_text(
        w1_lines.replace(line("d:0", "d0.jsonl") + "\n", "")
    )
    (w2 / "results.jsonl").write_text(line("d:0", "d0.jsonl") + "\n")
    seen = prepare(workers, out, problems(4), manifest)
    assert sorted(s["problem_id"] for s in seen) == ["d:0", "d:2"]
    assert [
        json.loads(t)["problem_id"]
        for t in (workers[0].folder / "results.jsonl").read_text().splitlines()
    ] == ["d:2"]
    claims = Claims(out / WORKERS_DIR / CLAIMS_DIR)
    assert [claims.take(f"d:{i}") for i in range(4)] == [False, True, False, True]


def test_claims_are_for_the_workers_alone(tmp_path: Path) -> None:
    """--claims is hidden and set by the parent: given by hand without --shard, or beside
    --workers, it is refused saying to leave it out."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q 1", "answer": 1}) + "\n")
    for more in ([], ["--shard", "1/2", "--workers", "2"]):
        res = CliRunner().invoke(
            app,
            ["eval", "--dataset", str(data), "--claims", str(tmp_path / "c"), *more,
             "--base-url", "http://127.0.0.1:9/v1", "--no-probe", "--output", str(tmp_path / "o")],
        )  # fmt: skip
        assert res.exit_code == 1
        assert "--claims is for the workers of eval --workers: leave it out" in res.output
