"""The eval runner's details that a results file, a resume and a reader rely on: the exact
scores and run summaries of a problem, what run.json holds and which resumes it accepts,
trace file names that stay put across versions, and refusals that name the fix.

Each test here was written against mutants of eval/runner.py that every other test let
live (`.ci/mutation eval/runner.py`); the survivors left are in .ci/mutation-survivors.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_backend import FakeBackend, Script

from deepconf.config import ConfidenceConfig, DeepConfConfig
from deepconf.errors import ConfigError
from deepconf.eval.datasets import EvalProblem
from deepconf.eval.report import Score
from deepconf.eval.runner import (
    check_manifest,
    manifest_of,
    parse_methods,
    read_manifest,
    read_results,
    run_eval,
    scores_of,
    setting_differences,
    trace_file,
)
from deepconf.voting import OFFLINE_METHODS

CONFIG = DeepConfConfig(
    budget=4, warmup=2, concurrency=4, confidence=ConfidenceConfig(window=4, tail=4)
)
PROBLEM = EvalProblem("p", "q", "q", "7")

# Trace i answers ANSWERS[i] after TOKENS[i] tokens: two right, one math-verify cannot
# read ("x^2+"), one wrong.
ANSWERS = ["7", "7", "x^2+", "8"]
TOKENS = [10, 20, 30, 40]


def scripted() -> FakeBackend:
    pairs = enumerate(zip(ANSWERS, TOKENS, strict=True))
    return FakeBackend({i: Script(conf=15.0, n=n, answer=a) for i, (a, n) in pairs})


async def test_pass_at_1_and_a_vote_score_exactly(tmp_path: Path) -> None:
    """pass@1 is the expected score over the finished traces: the fraction right, their mean
    tokens, no single answer, status "expected", and the count of answers math-verify could
    not read. A vote's score carries its answer, its grade and the whole run's tokens."""
    results = await run_eval(
        scripted(), [PROBLEM], CONFIG, ["pass@1", "majority"], tmp_path, max_traces=4
    )
    assert scores_of(results) == [
        Score("pass@1", "p", 0.5, 25.0, None, "expected", 1),
        Score("majority@4", "p", 1.0, 100, "7", "correct", 0),
    ]


async def test_no_pass_at_1_unless_asked(tmp_path: Path) -> None:
    """Finished traces alone do not add a pass@1 score: only the methods asked for appear."""
    results = await run_eval(scripted(), [PROBLEM], CONFIG, ["majority"], tmp_path)
    assert [s.method for s in scores_of(results)] == ["majority@4"]


async def test_an_online_score_keeps_an_unreadable_answer_and_says_so(tmp_path: Path) -> None:
    """A live run's answer that math-verify cannot read is kept as the score's answer, graded
    "unparsed" and counted, so the report can list it."""
    fake = FakeBackend(default=Script(conf=15.0, n=8, answer="x^2+"))
    results = await run_eval(fake, [PROBLEM], CONFIG, ["online-low"], tmp_path)
    assert scores_of(results) == [Score("deepconf-low", "p", 0.0, 16, "x^2+", "unparsed", 1)]


async def test_each_run_summary_says_what_ran(tmp_path: Path) -> None:
    """The results line keeps one summary per run, under the run's name: the offline run in
    offline mode, each online method in online mode with its own variant, whatever mode and
    variant the eval's config names; each summary names the problem and its trace file, and
    leaves the traces to that file."""
    config = CONFIG.model_copy(update={"mode": "offline", "variant": "low"})
    methods = ["majority", "online-high"]
    (line,) = await run_eval(scripted(), [PROBLEM], config, methods, tmp_path)
    runs = line["runs"]
    assert list(runs) == ["offline", "online-high"]
    assert (runs["offline"]["mode"], runs["offline"]["problem_id"]) == ("offline", "p")
    high = runs["online-high"]
    assert (high["mode"], high["variant"], high["problem_id"]) == ("online", "high", "p")
    assert high["trace_file"] == trace_file(tmp_path, "p", "online-high").name
    assert "traces" not in high


def test_offline_expands_to_every_offline_deepconf_method_and_nothing_else() -> None:
    """'offline' is every offline DeepConf method; majority comes only when named."""
    assert parse_methods("offline") == [m for m in OFFLINE_METHODS if m != "majority"]
    assert parse_methods("majority,offline")[0] == "majority"


def test_method_refusals_list_the_choices() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_methods("best")
    assert str(bad.value) == (
        "unknown method 'best': use pass@1, majority, offline (all offline DeepConf methods),"
        f" one of {', '.join(OFFLINE_METHODS[1:])}, online-low or online-high"
    )
    assert OFFLINE_METHODS[0] == "majority"  # so the list above names each method once
    with pytest.raises(ConfigError) as empty:
        parse_methods(" , ")
    assert str(empty.value) == "--methods is empty: name at least one method"


# --- run.json --------------------------------------------------------------------------------


def test_run_json_is_sorted_and_indented_for_people(tmp_path: Path) -> None:
    """run.json is read by people and diffed between folders: keys sorted, two-space indent,
    and its parent folders made as needed."""
    manifest = manifest_of("d.jsonl", None, ["majority"], CONFIG)
    out = tmp_path / "a" / "b"
    check_manifest(out, manifest)
    text = (out / "run.json").read_text(encoding="utf-8")
    assert text == json.dumps(manifest, indent=2, sort_keys=True)
    assert text.startswith('{\n  "config": {\n    "answer": {')


def test_a_folder_written_in_the_released_format_resumes(tmp_path: Path) -> None:
    """run.json's top-level names are a format: a folder written by an earlier version (this
    literal) resumes. Concurrency changes how fast, not what, so a resume may change it."""
    cfg = CONFIG.model_dump(mode="json", exclude={"concurrency"})
    released = {"config": cfg, "dataset": "d.jsonl", "methods": ["majority"]}
    released["prompt_template"] = "Q: {question}"
    tmp_path.joinpath("run.json").write_text(json.dumps(released), encoding="utf-8")
    faster = CONFIG.model_copy(update={"concurrency": 32})
    check_manifest(tmp_path, manifest_of("d.jsonl", "Q: {question}", ["majority"], faster))
    assert "concurrency" not in manifest_of("d.jsonl", None, [], CONFIG)["config"]


def test_a_refused_resume_names_four_settings_and_the_way_out(tmp_path: Path) -> None:
    old = manifest_of("d.jsonl", None, ["majority"], CONFIG)
    check_manifest(tmp_path, old)
    new_config = CONFIG.model_copy(update={"budget": 8, "warmup": 4, "tau": 0.9})
    new = manifest_of("e.jsonl", "T {question}", ["pass@1"], new_config)
    with pytest.raises(ConfigError) as refused:
        check_manifest(tmp_path, new)
    assert str(refused.value) == (
        f"{tmp_path} holds a run with other settings (config.budget: 4 there, 8 now;"
        " config.tau: 0.95 there, 0.9 now; config.warmup: 2 there, 4 now;"
        " dataset: 'd.jsonl' there, 'e.jsonl' now): use a new --output folder, or rerun with"
        " the same settings to resume"
    )


def test_setting_differences_name_settings_on_one_side_only() -> None:
    """A setting one side lacks (a shard, a section an older version did not write, a
    section that is null on one side) is a difference, named by its dotted path."""
    assert setting_differences({"a": 1}, {"a": 1, "shard": "1/2"}) == [("shard", None, "1/2")]
    assert setting_differences({"p": None}, {"p": {"x": 1}}) == [("p", None, {"x": 1})]
    assert setting_differences({"p": {"x": 1}}, {"p": None}) == [("p", {"x": 1}, None)]


def test_unreadable_run_json_says_why(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot be read \(it is empty\): it was cut off"):
        read_manifest(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot be read \(it holds no settings object\)"):
        read_manifest(path)


# --- results.jsonl -------------------------------------------------------------------------


def test_a_blank_line_is_skipped_and_a_bad_line_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"problem_id": "a"}\n\n{"problem_id": "b"}\n', encoding="utf-8")
    assert [r["problem_id"] for r in read_results(path)] == ["a", "b"]
    path.write_text('{"problem_id": "a"}\n{"problem_id": \n', encoding="utf-8")
    with pytest.raises(ConfigError) as bad:
        read_results(path)
    assert str(bad.value).startswith(f"{path} line 2 is not valid JSON (")
    assert str(bad.value).endswith(
        "); fix or delete that line to resume (its problem will be rerun)"
    )


async def test_run_eval_limits_name_the_flags_and_accept_the_edges(tmp_path: Path) -> None:
    """One trace at a time and one problem at a time are allowed; zero of either is refused;
    a warm-up equal to the budget is allowed (online counts warm-up in the budget)."""
    for max_traces, parallel in ((0, 1), (1, 0)):
        with pytest.raises(ConfigError) as bad:
            await run_eval(
                scripted(),
                [PROBLEM],
                CONFIG,
                ["majority"],
                tmp_path,
                max_traces=max_traces,
                parallel=parallel,
            )
        assert str(bad.value) == "--max-traces and --parallel must be at least 1"
    edge = CONFIG.model_copy(update={"warmup": 4})
    out = tmp_path / "new" / "nested"  # made with its parents
    fake = FakeBackend(default=Script(conf=15.0, n=8, answer="7"))
    (line,) = await run_eval(fake, [PROBLEM], edge, ["online-low"], out, max_traces=1, parallel=1)
    assert scores_of([line])[0].correct == 1.0
    assert fake.max_in_flight == 1
    with pytest.raises(ConfigError) as over:
        await run_eval(
            fake, [PROBLEM], CONFIG.model_copy(update={"warmup": 5}), ["online-low"], tmp_path / "o"
        )
    assert str(over.value).endswith(
        "online methods count warm-up traces in the budget, so raise --budget or lower --warmup"
    )


# --- trace file names ----------------------------------------------------------------------


def test_trace_file_names_are_stable_readable_and_unique(tmp_path: Path) -> None:
    """Resume and replay find trace files by name, so a name is a format: pinned here. The
    readable part keeps letters, digits and ._- and squeezes every other run into one _; a
    4-byte digest of the whole id tells apart ids that read alike."""
    assert trace_file(tmp_path, "aime/2024 #3", "offline") == (
        tmp_path / "traces" / "aime_2024_3-d32d3f24.offline.jsonl"
    )
    plain = trace_file(tmp_path, "Ab.c_d-9", "online-low")
    assert plain.name == "Ab.c_d-9-f911c771.online-low.jsonl"
    a, b = trace_file(tmp_path, "x/y", "offline"), trace_file(tmp_path, "x y", "offline")
    assert a.name.startswith("x_y-") and b.name.startswith("x_y-") and a != b
    long = trace_file(tmp_path, "q" * 200, "offline").name
    assert long.startswith("q" * 80 + "-") and len(long) == 80 + 1 + 8 + len(".offline.jsonl")
