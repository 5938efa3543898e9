"""The eval runner: scores per method, the global trace limit, trace files, and resuming
after a kill (simulated cut-off file and a real kill -9 of a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.fake_backend import FakeBackend, Script

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.config import ConfidenceConfig, DeepConfConfig
from deepconf.errors import ConfigError
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.replay import load_pools
from deepconf.eval.runner import (
    check_manifest,
    parse_methods,
    read_results,
    run_eval,
    scores_of,
    trace_file,
)

TESTS = Path(__file__).resolve().parents[1]


class PromptFake(FakeBackend):
    """Trace i of a prompt "n" answers n when i % 4 != 3, else n + 1, at confidence 18 for
    right answers and 12 for wrong ones (so confidence filters help)."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        self.requests.append(request)
        n = int(str(request.prompt).split()[-1])
        wrong = request.index % 4 == 3
        script = Script(conf=12.0 if wrong else 18.0, n=10, answer=str(n + wrong), delay=0.001)
        return self._stream(request.index, script)


def problems(k: int) -> list[EvalProblem]:
    return [EvalProblem(f"p{i}", f"q {i}", f"q {i}", str(i)) for i in range(k)]


CONFIG = DeepConfConfig(
    budget=8, warmup=4, concurrency=4, confidence=ConfidenceConfig(window=4, tail=4)
)


def test_parse_methods_expands_offline_and_rejects_unknown() -> None:
    """'offline' names every offline DeepConf method; aliases map; unknown names fail."""
    methods = parse_methods("pass@1,majority@64,offline,deepconf-low,high")
    assert methods[:2] == ["pass@1", "majority"]
    assert "tail@10" in methods and "lowest@90" in methods and "mean" in methods
    assert methods[-2:] == ["online-low", "online-high"]
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("pass@1,best")


async def test_eval_scores_every_method_and_saves_traces(tmp_path: Path) -> None:
    """Every problem gets every method's score; pass@1 is the fraction of right traces
    (3 of 4); offline votes are right; traces land in per-problem files replay can read."""
    fake = PromptFake()
    methods = parse_methods("pass@1,majority,tail@10,online-low,online-high")
    results = await run_eval(fake, problems(3), CONFIG, methods, tmp_path, max_traces=3)
    assert len(results) == 3
    scores = {(s.problem_id, s.method): s for s in scores_of(results)}
    assert scores[("p1", "pass@1")].correct == pytest.approx(0.75)
    assert scores[("p1", "majority@8")].correct == 1.0
    assert scores[("p1", "majority@8")].tokens == 80
    assert scores[("p2", "tail@10")].correct == 1.0
    low = scores[("p0", "deepconf-low")]
    assert low.correct == 1.0 and low.tokens < 80  # stops after the warm-up
    pools = load_pools(sorted((tmp_path / "traces").glob("*.offline.jsonl")))
    assert sorted(pools) == ["p0", "p1", "p2"] and len(pools["p0"]) == 8
    assert trace_file(tmp_path, "p0", "online-low").exists()
    assert len(read_results(tmp_path / "results.jsonl")) == 3


async def test_global_trace_limit_holds_across_problems(tmp_path: Path) -> None:
    """Problems run concurrently, yet no more than max_traces streams are open at once."""
    fake = PromptFake()
    await run_eval(fake, problems(6), CONFIG, ["majority"], tmp_path, max_traces=5, parallel=6)
    assert 4 < fake.max_in_flight <= 5


async def test_resume_skips_finished_and_drops_a_cut_off_line(tmp_path: Path) -> None:
    """A results file ending in a cut-off line resumes: the complete line's problem is
    skipped, the cut one is rerun, and the file is whole JSON lines again."""
    fake = PromptFake()
    await run_eval(fake, problems(2), CONFIG, ["majority"], tmp_path)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    fake2 = PromptFake()
    results = await run_eval(fake2, problems(3), CONFIG, ["majority"], tmp_path)
    assert sorted(r["problem_id"] for r in results) == ["p0", "p1", "p2"]
    reran = {str(r.prompt) for r in fake2.requests}
    assert reran == {"q 1", "q 2"}
    ids = [json.loads(x)["problem_id"] for x in path.read_text().splitlines()]
    assert sorted(ids) == ["p0", "p1", "p2"]


async def test_a_rerun_problem_starts_its_trace_files_afresh(tmp_path: Path) -> None:
    """A problem killed mid-run left partial trace files; when the resume reruns it, those
    traces must not mix into the new attempt's pools (replay would count both attempts)."""
    methods = ["majority", "online-low"]
    await run_eval(PromptFake(), problems(2), CONFIG, methods, tmp_path)
    path = tmp_path / "results.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n")  # p1 never finished
    runs = ("offline", "online-low")
    stale = {run: trace_file(tmp_path, "p1", run).read_text() for run in runs}
    for run in runs:  # the killed attempt's half-written files, one whole line each
        trace_file(tmp_path, "p1", run).write_text(stale[run].splitlines()[0] + "\n")
    before = {run: trace_file(tmp_path, "p0", run).read_text() for run in runs}
    await run_eval(PromptFake(), problems(2), CONFIG, methods, tmp_path)
    for run in runs:  # the rerun's lines alone (elapsed times differ, so count them)
        lines = trace_file(tmp_path, "p1", run).read_text().splitlines()
        assert len(lines) == len(stale[run].splitlines())
        assert trace_file(tmp_path, "p0", run).read_text() == before[run]  # not rerun
    assert len(load_pools([trace_file(tmp_path, "p1", "offline")])["p1"]) == 8


def test_manifest_refuses_a_resume_with_other_settings(tmp_path: Path) -> None:
    """Rerunning into a folder with other methods or settings is refused, naming each
    setting that differs by its full name with both values (not "config differ")."""
    check_manifest(tmp_path, {"methods": ["majority"], "config": {"budget": 8}})
    check_manifest(tmp_path, {"methods": ["majority"], "config": {"budget": 8}})
    with pytest.raises(ConfigError, match=r"methods: \['majority'\] there, \['pass@1'\] now"):
        check_manifest(tmp_path, {"methods": ["pass@1"], "config": {"budget": 8}})
    with pytest.raises(ConfigError, match=r"config\.budget: 8 there, 16 now") as info:
        check_manifest(tmp_path, {"methods": ["majority"], "config": {"budget": 16}})
    assert "differ" not in str(info.value)


async def test_online_warmup_over_budget_is_refused(tmp_path: Path) -> None:
    """An online method whose warm-up exceeds the budget fails before any trace runs."""
    config = CONFIG.model_copy(update={"mode": "offline", "warmup": 16})
    with pytest.raises(ConfigError, match="warmup"):
        await run_eval(PromptFake(), problems(1), config, ["online-low"], tmp_path)


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from support.fake_backend import FakeBackend, Script
    from deepconf.config import ConfidenceConfig, DeepConfConfig
    from deepconf.eval.datasets import EvalProblem
    from deepconf.eval.runner import run_eval

    class Slow(FakeBackend):
        def stream(self, request):
            n = int(str(request.prompt).split()[-1])
            # problem 0 is quick, each later one takes about a second
            script = Script(conf=18.0, n=10, answer=str(n), delay=0.0 if n == 0 else 0.1)
            return self._stream(request.index, script)

    problems = [EvalProblem(f"p{i}", f"q {i}", f"q {i}", str(i)) for i in range(6)]
    config = DeepConfConfig(budget=8, warmup=4, confidence=ConfidenceConfig(window=4))
    asyncio.run(run_eval(Slow(), problems, config, ["majority"], Path(sys.argv[1]), parallel=1))
    """
)


def test_kill_9_mid_run_loses_only_problems_in_flight(tmp_path: Path) -> None:
    """A subprocess killed with SIGKILL mid-run leaves whole result lines; a rerun finishes
    the rest without repeating any finished problem."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = read_results(results)
    assert 1 <= len(kept) < 6
    fake = PromptFake()
    final = asyncio.run(run_eval(fake, problems(6), CONFIG, ["majority"], out))
    ids = [json.loads(x)["problem_id"] for x in results.read_text().splitlines()]
    assert sorted(ids) == [f"p{i}" for i in range(6)]  # no duplicates, none lost
    assert {str(r.prompt) for r in fake.requests}.isdisjoint(
        {f"q {r['problem_id'][1:]}" for r in kept}
    )
    assert len(final) == 6


async def test_eval_smoke_on_the_bundled_engine(tmp_path: Path) -> None:
    """The runner drives the real in-process engine (a tiny random Falcon-H1): built-in chain
    problems, offline and online runs, every trace counted and saved, every grade given."""
    from support.tiny_model import write_tiny_model

    from deepconf.backends.bundled import BundledBackend
    from deepconf.config import SamplingConfig
    from deepconf.eval.datasets import load_dataset

    backend = BundledBackend(write_tiny_model(tmp_path / "tiny"), max_batch=8)
    config = DeepConfConfig(
        budget=4,
        warmup=2,
        concurrency=4,
        confidence=ConfidenceConfig(window=4, top_logprobs=5),
        sampling=SamplingConfig(max_tokens=12, seed=0),
    )
    chain = load_dataset("chain:difficulty=s2d1,count=2")
    try:
        results = await run_eval(
            backend, chain, config, ["pass@1", "majority", "online-low"], tmp_path / "out"
        )
    finally:
        await backend.aclose()
    assert len(results) == 2
    scores = scores_of(results)
    assert {s.method for s in scores} == {"pass@1", "majority@4", "deepconf-low"}
    majority = [s for s in scores if s.method == "majority@4"]
    assert all(0 < s.tokens <= 4 * 12 for s in majority)
    pools = load_pools(sorted((tmp_path / "out" / "traces").glob("*.offline.jsonl")))
    assert sorted(len(p) for p in pools.values()) == [4, 4]


async def test_a_failing_problem_stops_the_run_with_its_own_error(tmp_path: Path) -> None:
    """When every trace of a problem fails, the run stops with that BackendError (not an
    exception group), and the problems finished before it stay saved for a resume."""
    from deepconf.errors import BackendError

    class Failing(PromptFake):
        def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
            if str(request.prompt) == "q 1":
                return self._stream(request.index, Script(n=5, fail_at=0))
            return super().stream(request)

    with pytest.raises(BackendError, match="failed in a row"):
        await run_eval(Failing(), problems(3), CONFIG, ["majority"], tmp_path, parallel=1)
    assert [r["problem_id"] for r in read_results(tmp_path / "results.jsonl")] == ["p0"]
