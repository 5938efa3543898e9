"""`deepconf eval --workers N` (eval/workers.py): real worker processes against a scripted HTTP
server in this process. Two workers write the same records, trace files and report as one; a
worker killed with SIGKILL mid-problem loses only that problem, and the rerun ends where an
uninterrupted run does; a failing worker or Ctrl-C stops the others; the trace limit is split
exactly; bad counts and a folder of another worker count are refused saying what to do.

Ordering comes from the server's records (a stream seen, a stream left by its client) and
the workers' results files, never from sleeping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.eval_folders import records, trace_files
from support.processes import running
from support.scripted_server import Script, ScriptedServer, ScriptToken
from typer.testing import CliRunner

from deepconf.child_processes import CLI, PARENT_ENV
from deepconf.cli import app
from deepconf.errors import ConfigError
from deepconf.eval import workers as workers_module
from deepconf.eval.shards import Shard
from deepconf.eval.workers import plan_workers, split_limit

SEED = 100
HANG_S = 120.0  # a hang, not a slow machine: worker processes start in seconds
METHODS = "pass@1,majority,tail@10,online-low"


class Scripts:
    """Scripts as a function of prompt and seed alone ("q n" with seed s answers n, or n+1
    when s % 4 == 3; confidences drawn from (n, s)), so any process, in any order, gets the
    same trace for the same request. `stall` names prompts whose streams stop after two
    tokens and stay open until their client goes away."""

    def __init__(self) -> None:
        self.stall: set[str] = set()
        self.reject: set[str] = set()

    def __call__(self, number: int, body: dict[str, Any]) -> Script | None:
        seed = body.get("seed")
        if seed is None:
            return None  # the capability probe: the default script
        prompt = body["messages"][-1]["content"]
        n = int(prompt.split()[-1])
        if prompt in self.reject:
            return Script([], status=400)
        tokens = [
            ScriptToken(" step", [-0.01, *(-(8.0 + (seed * 7 + n * 3 + j) % 9) for _ in range(30))])
            for j in range(6 + n % 3)
        ]
        answer = n + (seed % 4 == 3)
        tokens.append(ScriptToken(f" \\boxed{{{answer}}}", [-0.01, *([-10.0] * 30)]))
        return Script(tokens, stall_after=2 if prompt in self.stall else None)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(choose=Scripts()) as srv:
        yield srv


def scripts(server: ScriptedServer) -> Scripts:
    assert isinstance(server.choose, Scripts)
    return server.choose


def dataset(tmp_path: Path, k: int) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"q {i}", "answer": i}) + "\n" for i in range(k))
    )
    return path


def eval_args(server: ScriptedServer, data: Path, output: Path, *more: str) -> list[str]:
    """One trace at a time per problem: an online run's stop then falls at the same trace
    every time, so two runs on the same seeds write the same records."""
    return [
        "eval", "--dataset", str(data), "--base-url", server.base_url, "--no-probe",
        "--budget", "8", "--warmup", "4", "--window", "4", "--tail", "4", "--concurrency", "1",
        "--seed", str(SEED), "--methods", METHODS, "--parallel", "1", "--output", str(output),
        *more,
    ]  # fmt: skip


def run(args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def prompts_streamed(server: ScriptedServer, since: int = 0) -> set[str]:
    return {s.body["messages"][-1]["content"] for s in server.streams[since:] if s.seed is not None}


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def children(pid: int) -> dict[str, int]:
    """The worker processes of a parent, by the --shard they were given: a forked worker
    carries it in its process name, one started anew in its command line."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        name = Path(f"/proc/{child}/comm").read_text().strip()
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if name.startswith("deepconf "):
            found[name.split()[1]] = int(child)
        elif b"--shard" in argv:
            found[argv[argv.index(b"--shard") + 1].decode()] = int(child)
    return found


# A shell runs a background job with SIGINT ignored, and a Python started that way keeps
# ignoring it (so does every worker it starts): under `.ci/stress &` or a CI runner, a
# Ctrl-C test would then hang. The parent takes SIGINT back, as in a terminal.
AS_IN_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "


def parent(args: list[str]) -> subprocess.Popen[str]:
    """`deepconf eval` in its own process, as a user runs it (so it can be signalled)."""
    return subprocess.Popen(
        [sys.executable, "-P", "-c", AS_IN_A_TERMINAL + CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait(server: ScriptedServer, predicate: Any, what: str) -> None:
    assert server.wait_for(predicate, timeout=HANG_S), f"not reached in {HANG_S:.0f} s: {what}"


# --- the split --------------------------------------------------------------------------------


def test_the_trace_limit_is_split_exactly_and_a_bad_count_is_refused() -> None:
    """floor(L/N) each, one more for the first L mod N: the sum is L and no share is 0."""
    assert split_limit(64, 1) == [64]
    assert split_limit(10, 3) == [4, 3, 3]
    assert split_limit(5, 5) == [1, 1, 1, 1, 1]
    with pytest.raises(ConfigError) as info:
        split_limit(3, 4)
    assert str(info.value) == (
        "--workers 4 is more than --max-traces 3: the limit is shared by the workers and each"
        " streams at least one trace; raise --max-traces or lower --workers"
    )
    with pytest.raises(ConfigError, match=r"^--workers must be at least 1, got 0$"):
        split_limit(3, 0)


def test_workers_of_a_node_shard_slice_it_again_by_position(tmp_path: Path) -> None:
    """Node 2 of 3 with 2 workers: worker i runs shard 2 + 3(i-1) of 6, which selects of the
    dataset exactly what shard i/2 selects of the node's shard."""
    plan = plan_workers(tmp_path, 2, 5, Shard(2, 3))
    assert [(str(w.shard), w.max_traces, w.folder) for w in plan] == [
        ("2/6", 3, tmp_path / ".workers" / "1"),
        ("5/6", 2, tmp_path / ".workers" / "2"),
    ]
    data = list(range(20))
    node = Shard(2, 3).select(data)
    for w in plan:
        assert w.shard.select(data) == w.select(node)
    assert [w.shard for w in plan_workers(tmp_path, 3, 3, None)] == [
        Shard(1, 3),
        Shard(2, 3),
        Shard(3, 3),
    ]


def test_workers_get_the_flags_the_eval_was_given(
    tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker runs with every option the eval was given, from the command line or the
    environment (--base-url from $DEEPCONF_BASE_URL), as flags again: a switch as itself, a
    template as typed (the worker reads it the same way), defaults left out, and --workers,
    --shard, --max-traces and --output left to the parent."""
    given: list[list[str]] = []

    def capture(workers: Any, argv: list[str]) -> Any:
        given.append(argv)
        raise ConfigError("captured")

    monkeypatch.setattr(workers_module, "workers_running", capture)
    monkeypatch.setenv("DEEPCONF_BASE_URL", server.base_url)
    data = dataset(tmp_path, 2)
    args = ["eval", "--dataset", str(data), "--prompt-template", "Q: {problem}\\n", "--no-probe"]
    args += ["--temperature", "0.5", "--workers", "2", "--max-traces", "5", "--parallel", "2"]
    res = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert res.exit_code == 1 and "error: captured" in res.output
    assert given == [
        [
            "--dataset", str(data), "--prompt-template", "Q: {problem}\\n", "--parallel", "2",
            "--base-url", server.base_url, "--no-probe", "--temperature", "0.5",
        ]
    ]  # fmt: skip


def test_eval_refuses_more_workers_than_traces(tmp_path: Path, server: ScriptedServer) -> None:
    data = dataset(tmp_path, 2)
    res = run(eval_args(server, data, tmp_path / "out", "--workers", "3", "--max-traces", "2"))
    assert res.exit_code == 1
    assert "--workers 3 is more than --max-traces 2" in " ".join(res.output.split())
    assert not (tmp_path / "out").exists()


# --- equal to one worker ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_write_what_one_writes(tmp_path: Path, server: ScriptedServer) -> None:
    """5 problems with one worker (in process) and with two worker processes: the same
    results records, trace files (seeds 100-107), report.md, summary.json and run.json;
    the workers' folder is gone, and the progress counts problems over both workers. The
    two-worker parent is a process of its own, as a user's is, so its workers are forks
    of it (this test process runs the server's thread: workers it starts are new
    interpreters, as the rerun's below are); both ways give the same folder."""
    data = dataset(tmp_path, 5)
    one, two = tmp_path / "one", tmp_path / "two"
    res = run(eval_args(server, data, one))
    assert res.exit_code == 0, res.output
    proc = parent(eval_args(server, data, two, "--workers", "2", "--max-traces", "3"))
    said, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, said
    progress = [line for line in said.splitlines() if line.startswith("eval ")]
    assert [line.split()[1] for line in progress] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert records(two) == records(one)
    assert trace_files(two) == trace_files(one)
    assert len(trace_files(one)) == 10  # 5 problems x (offline, online-low)
    for name in ("report.md", "summary.json", "run.json"):
        assert (two / name).read_text() == (one / name).read_text()
    assert sorted(p.name for p in two.iterdir()) == [
        "report.md",
        "results.jsonl",
        "run.json",
        "summary.json",
        "traces",
    ]
    # A rerun finds every problem done and starts workers that have nothing to do.
    before = len(server.streams)
    res = run(eval_args(server, data, two, "--workers", "2", "--max-traces", "3"))
    assert res.exit_code == 0 and "resuming: 5/5 problems" in " ".join(res.output.split())
    assert prompts_streamed(server, before) == set()
    assert records(two) == records(one)


@pytest.mark.slow
def test_workers_go_on_from_what_a_one_worker_run_left(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """A one-worker run of the first 3 problems, then --workers 2 on all 5 into the same
    folder: the workers get the finished problems of their shards and stream only q 3, q 4.
    Then --workers 2 --limit 2 streams nothing and keeps the other three problems' lines."""
    data = dataset(tmp_path, 5)
    out, whole = tmp_path / "out", tmp_path / "whole"
    assert run(eval_args(server, data, out, "--limit", "3")).exit_code == 0
    before = len(server.streams)
    res = run(eval_args(server, data, out, "--workers", "2"))
    assert res.exit_code == 0, res.output
    assert "resuming: 3/5 problems are already done" in " ".join(res.output.split())
    assert prompts_streamed(server, before) == {"q 3", "q 4"}
    assert run(eval_args(server, data, whole)).exit_code == 0
    assert records(out) == records(whole)
    assert trace_files(out) == trace_files(whole)
    before = len(server.streams)
    res = run(eval_args(server, data, out, "--workers", "2", "--limit", "2"))
    assert res.exit_code == 0 and "2 problems, budget 8" in " ".join(res.output.split())
    assert prompts_streamed(server, before) == set()
    assert records(out) == records(whole)
    assert trace_files(out) == trace_files(whole)


@pytest.mark.slow
def test_a_node_shard_run_by_workers_merges_with_the_other_nodes(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """Node 1 of 2 with two workers (shards 1/4 and 3/4: positions 0, 4 and 2), node 2 with one:
    node 1's folder is an ordinary shard folder (run.json names 1/2, shard.json its
    problems), and eval-merge of the two gives the whole run's records and trace files."""
    data = dataset(tmp_path, 5)
    node1, node2, whole = tmp_path / "n1", tmp_path / "n2", tmp_path / "whole"
    res = run(eval_args(server, data, node1, "--shard", "1/2", "--workers", "2"))
    assert res.exit_code == 0, res.output
    assert json.loads((node1 / "run.json").read_text())["shard"] == "1/2"
    shard_json = json.loads((node1 / "shard.json").read_text())
    assert shard_json == {"shard": "1/2", "problem_ids": ["d:0", "d:2", "d:4"]}
    assert sorted(records(node1)) == ["d:0", "d:2", "d:4"]
    assert run(eval_args(server, data, node2, "--shard", "2/2")).exit_code == 0
    res = run(["eval-merge", str(tmp_path / "all"), str(node1), str(node2)])
    assert res.exit_code == 0, res.output
    assert run(eval_args(server, data, whole)).exit_code == 0
    assert records(tmp_path / "all") == records(whole)
    assert trace_files(tmp_path / "all") == trace_files(whole)


# --- kills, failures, interrupts ----------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_problem_loses_only_that_problem(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """6 problems, 2 workers, one problem at a time each; q 2 stalls whichever worker runs
    it. Five problems finish, four of them in one worker (its own shard's three, then one
    the stalled worker never started: the work is shared); the worker in q 2 is then alone
    and is killed with SIGKILL there. The parent exits 1 naming the signal; the rerun
    streams only q 2 and its folder equals an uninterrupted run's."""
    data = dataset(tmp_path, 6)
    out = tmp_path / "out"
    scripts(server).stall.add("q 2")
    proc = parent(eval_args(server, data, out, "--workers", "2"))
    try:
        folders = {f"{i}/2": out / ".workers" / str(i) / "results.jsonl" for i in (1, 2)}
        wait(server, lambda: sum(map(lines_in, folders.values())) == 5, "five problems done")
        wait(server, lambda: len(children(proc.pid)) == 1, "the other worker exited")
        ((stalled, pid),) = children(proc.pid).items()
        assert sorted(map(lines_in, folders.values())) == [1, 4]  # a shard holds 3
        os.kill(pid, signal.SIGKILL)
        said, _ = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 1
    flat = " ".join(said.split())
    number = stalled.split("/")[0]
    assert f"worker {number}/2 (--shard {stalled}) was killed by signal SIGKILL; the other" in flat
    assert "rerun the same command to resume: finished problems are kept" in flat
    scripts(server).stall.clear()
    before = len(server.streams)
    res = run(eval_args(server, data, out, "--workers", "2"))
    assert res.exit_code == 0, res.output
    assert "resuming: 5/6 problems are already done" in " ".join(res.output.split())
    assert prompts_streamed(server, before) == {"q 2"}
    whole = tmp_path / "whole"
    assert run(eval_args(server, data, whole)).exit_code == 0
    assert records(out) == records(whole)
    assert trace_files(out) == trace_files(whole)
    assert not (out / ".workers").exists()


@pytest.mark.slow
def test_a_failing_worker_shows_its_own_error(tmp_path: Path, server: ScriptedServer) -> None:
    """The server rejects every trace of q 0 (worker 1's, unless worker 2 is through q 1
    first and takes it): the parent exits 1 with that worker's own message, quoted from its
    log, and how to go on."""
    data = dataset(tmp_path, 2)
    out = tmp_path / "out"
    scripts(server).reject.add("q 0")
    res = run(eval_args(server, data, out, "--workers", "2"))
    assert res.exit_code == 1
    flat = " ".join(res.output.split())
    failed = re.search(r"worker (\d)/2 \(--shard \1/2\) exited with code 1; the other", flat)
    assert failed, flat
    assert "the other workers were stopped" in flat
    assert f"Its last lines ({out / '.workers' / failed[1] / 'worker.log'}):" in flat
    assert (
        "error: 8 traces failed in a row, so deepconf gave up; the first error was:"
        f" {server.base_url} rejected the request (HTTP 400)"
    ) in flat.split("Its last lines")[1]
    assert flat.endswith("rerun the same command to resume: finished problems are kept")


@pytest.mark.slow
def test_a_worker_that_exits_non_zero_stops_the_others(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """Both workers stall mid-problem; worker 2 alone is interrupted (SIGINT), exits 130
    and says so in its log: the parent exits 1 quoting that line, and worker 1 is stopped
    (its stream is closed from its end)."""
    data = dataset(tmp_path, 2)
    scripts(server).stall.update({"q 0", "q 1"})
    proc = parent(eval_args(server, data, tmp_path / "out", "--workers", "2"))
    try:
        wait(server, lambda: len(prompts_streamed(server)) == 2, "both workers streaming")
        os.kill(children(proc.pid)["2/2"], signal.SIGINT)
        said, _ = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 1
    flat = " ".join(said.split())
    assert "worker 2/2 (--shard 2/2) exited with code 130; the other workers were stopped" in flat
    assert "error: interrupted: the problems that finished are saved in" in flat
    wait(server, lambda: all(s.disconnected for s in server.streams), "worker 1's stream closed")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_every_worker_and_says_how_to_resume(
    tmp_path: Path, server: ScriptedServer, sig: signal.Signals
) -> None:
    """SIGINT (Ctrl-C, here to the parent alone) or SIGTERM (a supervisor) to the parent:
    both workers stop (their stalled streams are closed), and it exits 130 saying to rerun."""
    data = dataset(tmp_path, 2)
    scripts(server).stall.update({"q 0", "q 1"})
    proc = parent(eval_args(server, data, tmp_path / "out", "--workers", "2"))
    try:
        wait(server, lambda: len(prompts_streamed(server)) == 2, "both workers streaming")
        proc.send_signal(sig)
        said, _ = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; rerun the same command to resume" in " ".join(said.split())
    wait(server, lambda: all(s.disconnected for s in server.streams), "the streams closed")


@pytest.mark.slow
def test_workers_end_when_their_parent_is_killed_outright(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """SIGKILL to the parent (the OOM killer, `kill -9`) gives it no chance to stop its
    workers: each worker ends itself when its parent goes. Both stalled streams are left by
    their clients and neither worker process is left running."""
    data = dataset(tmp_path, 2)
    scripts(server).stall.update({"q 0", "q 1"})
    proc = parent(eval_args(server, data, tmp_path / "out", "--workers", "2"))
    try:
        wait(server, lambda: len(prompts_streamed(server)) == 2, "both workers streaming")
        pids = children(proc.pid)
        assert set(pids) == {"1/2", "2/2"}
        proc.kill()
        proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    wait(server, lambda: all(s.disconnected for s in server.streams), "the streams closed")
    wait(server, lambda: not any(running(pid) for pid in pids.values()), "the workers ended")


def test_a_worker_started_after_its_parent_died_ends_at_once() -> None:
    """The parent can die between starting a worker and the worker arming its death signal:
    a worker whose parent is not the one named ends itself before doing anything."""
    code = "from deepconf.child_processes import die_with_parent; die_with_parent(); print('ran')"
    env = {**os.environ, PARENT_ENV: "1"}  # pid 1 is never this test's pid
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True,
        timeout=HANG_S,
    )  # fmt: skip
    assert done.returncode == -signal.SIGTERM
    assert "ran" not in done.stdout


def test_a_folder_of_another_worker_count_is_refused(
    tmp_path: Path, server: ScriptedServer
) -> None:
    """Shards of 3 left in OUT/.workers cannot be resumed as shards of 2: refused, naming
    the count to rerun with. One worker runs, saying it leaves them alone."""
    data = dataset(tmp_path, 2)
    out = tmp_path / "out"
    (out / ".workers" / "1").mkdir(parents=True)
    (out / ".workers" / "1" / "run.json").write_text(json.dumps({"shard": "1/3"}))
    res = run(eval_args(server, data, out, "--workers", "2"))
    assert res.exit_code == 1
    assert (
        f"{out / '.workers'} holds the unfinished workers of a run with --workers 3: rerun"
        " with --workers 3 to finish and merge them"
    ) in " ".join(res.output.split())
    res = run(eval_args(server, data, out))
    assert res.exit_code == 0
    assert (
        f"note: {out / '.workers'} holds the folders of an unfinished --workers run: one worker"
        " neither uses nor removes them"
    ) in " ".join(res.output.split())
