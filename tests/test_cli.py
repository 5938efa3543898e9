"""The CLI through typer's runner, against the real scripted streaming server on loopback.

Scenario: 60% of traces are "drifters" that start confident, lose confidence half-way and
answer 3; 40% stay confident and answer 7; trace 0 is confident and answers 5, so the
warm-up's vote is split and the online phase must run. Plain majority would say 3.
"""

from __future__ import annotations

import json

import pytest
from support.deadline_pool import saturated_deadline_pool
from support.scripted_server import (
    CONFIDENT,
    UNCONFIDENT,
    Script,
    ScriptedServer,
    ScriptToken,
    tokenize,
)
from typer.testing import CliRunner

from deepconf.cli import app

WORDS = " ".join(f"w{i}" for i in range(60))


def _script(answer: str, drift: bool) -> Script:
    tokens = tokenize(f"{WORDS} so the answer is \\boxed{{{answer}}}.")
    half = len(tokens) // 3
    lps = [CONFIDENT if (not drift or i < half) else UNCONFIDENT for i in range(len(tokens))]
    return Script(
        [ScriptToken(t, list(lp)) for t, lp in zip(tokens, lps, strict=True)],
        tokens_per_chunk=2,
        delay=0.002,
    )


@pytest.fixture
def server():
    right, drifter, odd = _script("7", False), _script("3", True), _script("5", False)
    by_seed = {i: right if i % 5 in (1, 3) else drifter for i in range(256)}
    by_seed[100] = odd  # seed 100 + trace 0
    with ScriptedServer(default=right, by_seed=by_seed) as srv:
        yield srv


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_solve_online_prints_answer_votes_and_savings(server, api):
    """Online DeepConf prunes the drifters, votes 7 against the majority's 3, and the summary
    shows the vote table and the tokens saved against plain majority."""
    r = _run(
        "solve", "--base-url", server.base_url, "--api", api, "--window", "8",
        "--budget", "48", "--warmup", "8", "--concurrency", "4", "--seed", "100",
        "What is 3+4?",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "answer: 7" in r.output
    assert "votes" in r.output and "saved" in r.output
    # A prune is a closed connection the server saw, before the stream's end.
    assert any(s.disconnected and not s.finished for s in server.streams)


def test_solve_json_prints_only_the_record(server):
    """--json prints one JSON object with the documented keys and nothing else on stdout."""
    r = _run(
        "solve", "--base-url", server.base_url, "--window", "8", "--budget", "48",
        "--warmup", "8", "--seed", "100", "--json", "What is 3+4?",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert {"answer", "votes", "beta", "threshold", "tokens", "traces"} <= set(record)
    assert record["answer"] == "7"
    statuses = {t["status"] for t in record["traces"]}
    assert "pruned" in statuses
    pruned_tokens = sum(t["tokens"] for t in record["traces"] if t["status"] == "pruned")
    assert record["tokens"]["total"] >= pruned_tokens > 0


def test_solve_offline_reports_majority_and_deepconf(server):
    """Offline: plain majority says 3, the tail@10 filter says 7 and is the answer."""
    r = _run(
        "solve", "--base-url", server.base_url, "--mode", "offline", "--window", "8",
        "--budget", "20", "--seed", "100", "--json", "q",
    )  # fmt: skip
    record = json.loads(r.stdout)
    assert record["methods"]["majority"] == "3"
    assert record["answer"] == record["methods"]["tail@10"] == "7"


def test_answers_math_verify_could_not_judge_are_reported(tmp_path):
    """Traces answer 0.5 and 1/2 (one value). While math-verify cannot run (earlier
    comparisons past their time still running), they count apart, and the solve says so:
    the summary's note and --json's unjudged_answers, never a silently split vote."""
    by_seed = {100 + i: Script.from_text(f"\\boxed{{{a}}}") for i, a in enumerate(["0.5", "1/2"])}
    args = ["solve", "--mode", "offline", "--budget", "2", "--seed", "100", "q"]
    with ScriptedServer(by_seed=by_seed) as srv, saturated_deadline_pool():
        shown = _run(*args[:-1], "--base-url", srv.base_url, "q")
        record = json.loads(_run(*args[:-1], "--base-url", srv.base_url, "--json", "q").stdout)
    flat = " ".join(shown.output.split())
    assert "note: 2 answers were compared as plain text: math-verify ran out of time" in flat
    assert record["unjudged_answers"] == 2
    assert sorted(v["answer"] for v in record["votes"]) == ["0.5", "1/2"]
    with ScriptedServer(by_seed=by_seed) as srv:
        record = json.loads(_run(*args[:-1], "--base-url", srv.base_url, "--json", "q").stdout)
    assert record["unjudged_answers"] == 0
    assert [(v["answer"], v["count"]) for v in record["votes"]] == [("0.5", 2)]


def test_solve_reads_stdin_and_file(server, tmp_path):
    """'-' reads the problem from stdin, --file from a file; both reach the server."""
    problem = tmp_path / "p.txt"
    problem.write_text("from a file")
    args = ["solve", "--base-url", server.base_url, "--budget", "2", "--warmup", "2", "--json"]
    assert CliRunner().invoke(app, [*args, "--file", str(problem)]).exit_code == 0
    assert CliRunner().invoke(app, [*args, "-"], input="from stdin").exit_code == 0
    prompts = [json.dumps(r.get("body", {})) for r in server.requests]
    assert any("from a file" in p for p in prompts)
    assert any("from stdin" in p for p in prompts)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "budget"),
        (["--variant", "medium"], "variant"),
        (["--warmup", "32", "--budget", "8"], "warmup"),
        (["--offline-method", "median@50"], "offline method"),
    ],
)
def test_bad_flags_get_a_clear_error(server, args, message):
    """Invalid settings exit with code 1 and a message naming the setting, no traceback."""
    r = CliRunner().invoke(app, ["solve", "--base-url", server.base_url, *args, "q"])
    assert r.exit_code == 1
    assert message in r.output.lower()
    assert "Traceback" not in r.output


def test_unreachable_server_is_a_clear_error():
    """Nothing listening: a one-line error that names the URL, exit code 1."""
    r = CliRunner().invoke(app, ["solve", "--base-url", "http://127.0.0.1:9/v1", "q"])
    assert r.exit_code == 1
    assert "127.0.0.1:9" in r.output


def test_every_source_package_is_installed() -> None:
    """Each folder of the source tree with an __init__.py is a package the distribution
    lists (pyproject's explicit list): a regular install, as CI and users get, must carry
    every one of them (deepconf.policies once went missing and only CI noticed)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {name: Path(folder) for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in dirs.items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder).parts
            found.add(".".join((name, *rel)))
    assert found <= listed, f"packages missing from pyproject: {sorted(found - listed)}"
