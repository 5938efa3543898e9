"""Sharded eval and merge (eval/shards.py, `deepconf eval --shard I/N`, `deepconf
eval-merge`): a dataset run as shards and merged equals the same dataset run whole on the
same seeds, record for record and trace file for trace file; shards of other settings, a
problem twice and a shard twice are refused with what differs; problems without a result are
named, and eval resumes the merged folder to run only those."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.eval_folders import records, trace_files
from support.fake_backend import FakeBackend, Script
from typer.testing import CliRunner

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.cli import app
from deepconf.config import ConfidenceConfig, DeepConfConfig, SamplingConfig
from deepconf.errors import ConfigError
from deepconf.eval import commands
from deepconf.eval import shards as shards_module
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.runner import check_manifest, manifest_of, run_eval
from deepconf.eval.shards import Shard, link_or_copy, merge_shards, record_shard

METHODS = ["pass@1", "majority", "tail@10", "online-low"]
SEED = 100
# One trace at a time: an online run's stop then falls at the same trace every time, so two
# runs on the same seeds write the same records (with traces in parallel it is a race).
CONFIG = DeepConfConfig(
    budget=8,
    warmup=4,
    concurrency=1,
    sampling=SamplingConfig(seed=SEED),
    confidence=ConfidenceConfig(window=4, tail=4),
)


class SeedFake(FakeBackend):
    """A trace is a function of its problem and its seed alone: prompt "q n" with seed s
    answers n, or n + 1 when s % 4 == 3, with per-token confidences drawn from (n, s). Had a
    shard run a problem on other seeds, its records would differ."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        self.requests.append(request)
        n, seed = int(str(request.prompt).split()[-1]), request.seed
        assert seed is not None
        confs = [10.0 + (seed * 7 + n * 3 + j) % 9 for j in range(6 + n % 3)]
        script = Script(conf=confs, answer=str(n + (seed % 4 == 3)))
        return self._stream(request.index, script)


def problems(k: int) -> list[EvalProblem]:
    return [EvalProblem(f"p{i}", f"q {i}", f"q {i}", str(i)) for i in range(k)]


async def run_whole(folder: Path, todo: list[EvalProblem], config: DeepConfConfig = CONFIG):
    check_manifest(folder, manifest_of("d.jsonl", None, METHODS, config))
    return await run_eval(SeedFake(), todo, config, METHODS, folder, parallel=2)


async def run_shard(folder: Path, shard: Shard, todo: list[EvalProblem], **kw: Any) -> None:
    """What `deepconf eval --shard` does: its slice, its manifest, its shard.json, the run."""
    config = kw.get("config", CONFIG)
    methods = kw.get("methods", METHODS)
    mine = shard.select(todo)
    check_manifest(folder, manifest_of("d.jsonl", None, methods, config, shard=str(shard)))
    record_shard(folder, shard, mine)
    await run_eval(SeedFake(), mine, config, methods, folder, parallel=2)


# --- shards ----------------------------------------------------------------------------------


def test_a_shard_is_i_of_n_and_anything_else_says_how_to_write_it() -> None:
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard.parse(" 2 / 4 ")) == "2/4"
    for text in ("0/2", "3/2", "1/0", "2", "a/b", "-1/2", ""):
        with pytest.raises(ConfigError) as info:
            Shard.parse(text)
        assert str(info.value) == (
            f"--shard {text!r}: write I/N with 1 <= I <= N, e.g. --shard 1/4 on the first of"
            " four machines and --shard 4/4 on the last"
        )


def test_shards_interleave_positions_and_cover_the_dataset_once() -> None:
    """Shard I of N takes positions I-1, I-1+N, ...: sizes within one of each other, every
    position in exactly one shard, and a problem's shard the same under any --limit."""
    ten = list(range(10))
    parts = [Shard(i, 3).select(ten) for i in (1, 2, 3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert Shard(2, 3).select(ten[:6]) == [1, 4]
    assert Shard(4, 4).select(ten[:3]) == []


# --- merged equals whole -----------------------------------------------------------------------


async def test_two_shards_merged_equal_one_run_on_the_same_seeds(tmp_path: Path) -> None:
    """5 problems run whole, and as shards 1/2 (p0, p2, p4) and 2/2 (p1, p3) then merged:
    the same results records, the same trace files with the same traces (seeds 100-107),
    and the same run.json, so the merged folder is the whole run's folder up to the clock."""
    await run_whole(tmp_path / "whole", problems(5))
    await run_shard(tmp_path / "s1", Shard(1, 2), problems(5))
    await run_shard(tmp_path / "s2", Shard(2, 2), problems(5))
    assert sorted(records(tmp_path / "s1")) == ["p0", "p2", "p4"]
    merged = merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "all")
    assert (merged.missing, merged.absent_shards) == ([], [])
    assert sorted(r["problem_id"] for r in merged.results) == ["p0", "p1", "p2", "p3", "p4"]
    assert records(tmp_path / "all") == records(tmp_path / "whole")
    whole = trace_files(tmp_path / "whole")
    assert trace_files(tmp_path / "all") == whole
    assert len(whole) == 10  # 5 problems x (offline, online-low)
    offline = next(rows for name, rows in whole.items() if name.endswith(".offline.jsonl"))
    assert [r["seed"] for r in offline] == list(range(SEED, SEED + 8))
    run_json = json.loads((tmp_path / "all" / "run.json").read_text())
    assert run_json == json.loads((tmp_path / "whole" / "run.json").read_text())
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "results.jsonl",
        "run.json",
        "traces",
    ]
    assert not (tmp_path / ".all.merging").exists()
    # The merged trace files are the shards' files under a second name, not copies.
    for name in whole:
        shard = next(f for f in ("s1", "s2") if (tmp_path / f / "traces" / name).exists())
        assert (tmp_path / "all" / "traces" / name).samefile(tmp_path / shard / "traces" / name)


def test_a_trace_file_is_copied_where_it_cannot_be_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across devices (EXDEV) or on a file system without hard links the merge copies."""
    source, target = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    source.write_text('{"trace": 1}\n')

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(shards_module.os, "link", no_link)
    link_or_copy(source, target)
    assert target.read_text() == source.read_text()
    assert not target.samefile(source)


async def test_missing_problems_are_named_and_eval_resumes_the_merged_folder(
    tmp_path: Path,
) -> None:
    """Shard 1/2 killed with one of its three problems unfinished (a cut-off last line) and
    shard 2/2 never run: the merge names the unfinished problem and the absent shard, leaves
    the shard's file as it was, and eval on the merged folder with the whole run's settings
    runs only the missing three; the result equals the whole run."""
    await run_shard(tmp_path / "s1", Shard(1, 2), problems(5))
    path = tmp_path / "s1" / "results.jsonl"
    lines = path.read_text().splitlines()
    cut = "\n".join(lines[:2]) + "\n" + lines[2][:40]
    path.write_text(cut)
    unfinished = json.loads(lines[2])["problem_id"]
    merged = merge_shards([tmp_path / "s1"], tmp_path / "all")
    assert (merged.missing, merged.absent_shards) == ([unfinished], ["2/2"])
    assert path.read_text() == cut
    fake = SeedFake()
    check_manifest(tmp_path / "all", manifest_of("d.jsonl", None, METHODS, CONFIG))
    await run_eval(fake, problems(5), CONFIG, METHODS, tmp_path / "all", parallel=2)
    assert {str(r.prompt) for r in fake.requests} == {"q 1", "q 3", f"q {unfinished[1:]}"}
    await run_whole(tmp_path / "whole", problems(5))
    assert records(tmp_path / "all") == records(tmp_path / "whole")
    assert trace_files(tmp_path / "all") == trace_files(tmp_path / "whole")


# --- refusals -----------------------------------------------------------------------------------


async def test_shards_of_other_settings_are_refused_naming_the_difference(tmp_path: Path) -> None:
    await run_shard(tmp_path / "s1", Shard(1, 2), problems(2))
    other = CONFIG.model_copy(update={"budget": 6})
    await run_shard(tmp_path / "s2", Shard(2, 2), problems(2), config=other)
    with pytest.raises(ConfigError) as info:
        merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "all")
    assert str(info.value) == (
        f"the shards were run with other settings (config.budget: 8 in {tmp_path / 's1'}, 6 in"
        f" {tmp_path / 's2'}): merge only shards of one eval, run with the same flags apart"
        " from --shard"
    )
    await run_shard(tmp_path / "s3", Shard(2, 2), problems(2), methods=["majority"])
    with pytest.raises(ConfigError, match=r"methods: \['pass@1', 'majority', 'tail@10', 'on"):
        merge_shards([tmp_path / "s1", tmp_path / "s3"], tmp_path / "all")
    assert not (tmp_path / "all").exists()


async def test_a_problem_in_two_shards_is_refused(tmp_path: Path) -> None:
    """Nodes that read the dataset in other orders would run some problems twice: refused,
    naming the problem and both folders, before anything is written."""
    await run_shard(tmp_path / "s1", Shard(1, 2), problems(3))
    await run_shard(tmp_path / "s2", Shard(2, 2), problems(3))
    p0 = (tmp_path / "s1" / "results.jsonl").read_text().splitlines()[0]
    with (tmp_path / "s2" / "results.jsonl").open("a") as f:
        f.write(p0 + "\n")
    with pytest.raises(ConfigError) as info:
        merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "all")
    problem = json.loads(p0)["problem_id"]
    assert str(info.value) == (
        f"problem {problem!r} has results in {tmp_path / 's1'} and in {tmp_path / 's2'}: the"
        " shards overlap (run with the same dataset file and order on every node); delete"
        " one folder's line for it, or rerun the shards"
    )
    assert not (tmp_path / "all").exists()


async def test_a_shard_twice_and_shards_of_other_splits_are_refused(tmp_path: Path) -> None:
    await run_shard(tmp_path / "s1", Shard(1, 2), problems(2))
    await run_shard(tmp_path / "t1", Shard(1, 3), problems(2))
    with pytest.raises(ConfigError) as info:
        merge_shards([tmp_path / "s1", tmp_path / "s1"], tmp_path / "all")
    assert str(info.value) == (
        f"shard 1/2 is given twice ({tmp_path / 's1'} and {tmp_path / 's1'}): give each"
        " shard's folder once"
    )
    with pytest.raises(ConfigError) as info:
        merge_shards([tmp_path / "s1", tmp_path / "t1"], tmp_path / "all")
    assert str(info.value) == (
        f"{tmp_path / 's1'} is shard 1/2 and {tmp_path / 't1'} shard 1/3: merge the shards"
        " of one split (the same N on every node)"
    )


async def test_what_is_not_a_whole_shard_or_a_new_folder_is_refused(tmp_path: Path) -> None:
    await run_whole(tmp_path / "whole", problems(1))
    await run_shard(tmp_path / "s1", Shard(1, 1), problems(1))
    with pytest.raises(ConfigError) as info:
        merge_shards([tmp_path / "whole"], tmp_path / "all")
    assert str(info.value) == (
        f"{tmp_path / 'whole'} is not a shard (its run.json names none): eval-merge joins the"
        " folders of `deepconf eval --shard I/N`"
    )
    with pytest.raises(ConfigError, match="is not an empty folder: give eval-merge a new OUT"):
        merge_shards([tmp_path / "s1"], tmp_path / "whole")
    for trace in (tmp_path / "s1" / "traces").glob("*.online-low.jsonl"):
        trace.unlink()
    with pytest.raises(ConfigError, match=r"online-low\.jsonl is missing, yet .* has problem 'p0'"):
        merge_shards([tmp_path / "s1"], tmp_path / "all")
    assert not (tmp_path / "all").exists() and not (tmp_path / ".all.merging").exists()


# --- the commands --------------------------------------------------------------------------------


def test_eval_shard_and_eval_merge_commands_give_the_whole_runs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deepconf eval --shard 1/2` and `--shard 2/2`, then `deepconf eval-merge`: the merged
    folder's report.md and summary.json are the whole run's, and `deepconf replay` prints
    the same sweep over it. A rerun of a shard resumes; a rerun with another shard into
    its folder is refused; merging shard 1/2 alone says 2/2 is missing and how to fill it."""
    monkeypatch.setattr(commands, "backend_from_flags", lambda *a, **k: SeedFake())
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"q {i}", "answer": i}) + "\n" for i in range(5))
    )
    flags = ["eval", "--dataset", str(data), "--budget", "8", "--warmup", "4", "--window", "4"]
    flags += ["--tail", "4", "--concurrency", "1", "--seed", str(SEED), "--methods"]
    flags += [",".join(METHODS)]
    runner = CliRunner()
    for out, shard in (("whole", []), ("s1", ["--shard", "1/2"]), ("s2", ["--shard", "2/2"])):
        res = runner.invoke(app, [*flags, *shard, "--output", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*flags, "--shard", "1/2", "--output", str(tmp_path / "s1")])
    assert res.exit_code == 0 and "resuming: 3/3 problems" in " ".join(res.output.split())
    res = runner.invoke(app, [*flags, "--shard", "2/2", "--output", str(tmp_path / "s1")])
    assert res.exit_code == 1 and "shard: '1/2' there, '2/2' now" in res.output
    merged, shards = tmp_path / "all", [str(tmp_path / "s1"), str(tmp_path / "s2")]
    res = runner.invoke(app, ["eval-merge", str(merged), *shards])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"merged 5 problems from 2 shard folder(s) into {merged}" in said
    whole = tmp_path / "whole"
    assert records(merged) == records(whole)
    for name in ("report.md", "summary.json"):
        assert (merged / name).read_text() == (whole / name).read_text()
    sweep = ["--warmup", "4", "--repeats", "4"]
    replays = [runner.invoke(app, ["replay", str(f), *sweep]) for f in (whole, merged)]
    assert [r.exit_code for r in replays] == [0, 0]
    assert "replay: 5 problems, budget 8, 4 orders each" in replays[0].output
    assert replays[0].output == replays[1].output
    res = runner.invoke(app, ["eval-merge", str(merged), *shards])  # again, onto a full OUT
    assert res.exit_code == 1 and "is not an empty folder" in res.output
    res = runner.invoke(app, ["eval-merge", str(tmp_path / "half"), shards[0]])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "note: shard(s) 2/2 not given: their problems are missing" in said
    assert f"rerun eval with the same flags but no --shard and --output {tmp_path / 'half'}" in said
