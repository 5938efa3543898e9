"""The CLI as a newcomer meets it: each rough edge found by trying it fresh, fixed and held.

Scripted-server scenario (as tests/test_cli.py): 60% of traces drift to low confidence and
answer 3, 40% stay confident and answer 7, so plain majority says 3 and DeepConf 7. Cases
that need the real bundled model run it with small budgets (a second or two each).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.scripted_server import (
    CONFIDENT,
    UNCONFIDENT,
    Script,
    ScriptedServer,
    ScriptToken,
    tokenize,
)
from typer.testing import CliRunner

import deepconf
import deepconf.cli
import deepconf.eval.commands as commands
from deepconf.cli import DISTRIBUTION, app
from deepconf.cli_common import fail, note
from deepconf.config import DeepConfConfig
from deepconf.serve.wire import summary

WORDS = " ".join(f"w{i}" for i in range(60))


def _script(answer: str, drift: bool) -> Script:
    tokens = tokenize(f"{WORDS} so the answer is \\boxed{{{answer}}}.")
    third = len(tokens) // 3
    lps = [CONFIDENT if (not drift or i < third) else UNCONFIDENT for i in range(len(tokens))]
    return Script([ScriptToken(t, list(lp)) for t, lp in zip(tokens, lps, strict=True)])


@pytest.fixture
def server():
    right, drifter = _script("7", False), _script("3", True)
    by_seed = {i: right if i % 5 in (1, 3) else drifter for i in range(256)}
    with ScriptedServer(default=right, by_seed=by_seed) as srv:
        yield srv


def _run(*args: str, input: str | None = None):
    result = CliRunner().invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result


# --- the problem itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "stdin"), [("", None), ("   \n", None), ("-", "")])
def test_an_empty_problem_is_refused_not_answered(prompt, stdin):
    """An empty or blank problem (argument or stdin) is an error: the model would still say
    something (the bundled one said 3, exit 0) and an exit 0 vouches for an answer."""
    r = _run("solve", prompt, input=stdin)
    assert r.exit_code == 1 and "the problem is empty" in r.output


def test_a_problem_outside_the_bundled_family_is_flagged():
    """Mixed-width chains are outside what the bundled model was trained on (every trace
    answered 12+7-3 with 5): the CLI says so before and after the run."""
    r = _run("solve", "--budget", "2", "--seed", "0", "Compute 12+7-3.")
    assert r.output.count("outside the bundled model's task family") == 1
    assert "same number of digits" in r.output


# --- messages and help ----------------------------------------------------------------------


def test_messages_print_brackets_as_written(capsys):
    """Install hints keep their extras: rich would read "[plot]" as markup and drop it."""
    note("pip install 'deepconf-orchestrator[plot]'")
    fail("pip install 'deepconf-orchestrator[llama]'")
    err = capsys.readouterr().err
    assert "'deepconf-orchestrator[plot]'" in err and "'deepconf-orchestrator[llama]'" in err


def test_bench_help_is_the_benchmarks_own():
    """`deepconf bench stream --help` lists the benchmark's flags (it showed the generic
    bench help); `deepconf bench --help` still explains bench."""
    own = _run("bench", "stream", "--help")
    assert own.exit_code == 0 and "--per-chunk" in own.output
    assert own.output.startswith("usage: deepconf bench stream [-h]")
    generic = _run("bench", "--help")
    assert generic.exit_code == 0 and "stream (client hot path)" in generic.output


def test_help_shows_defaults_and_no_value_for_flags():
    """--json and --no-probe are flags (no <bool> value after them), and every DeepConf
    setting states its default, the ones DeepConfConfig really has."""
    text = re.sub(r"\s+", " ", _run("solve", "--help").output.replace("│", " "))
    assert not re.search(r"--(json|no-probe) <bool>", text)
    c = DeepConfConfig()
    for default in (
        f"[default: {c.budget}]",
        f"[default: {c.warmup}, or --budget when smaller]",
        f"[default: {c.tau}]",
        f"[default: {c.confidence.top_logprobs}]",
        f"[default: {c.concurrency}]",
        f"[default: {c.offline_method}]",
        f"(bundled model: 16), else {c.confidence.window}]",
        f"(bundled model: 1.0), else {c.sampling.temperature}]",
        f"(bundled model: 1.0), else {c.sampling.top_p}]",
        f"(bundled model: 160), else {c.sampling.max_tokens}]",
        f"[default: {c.confidence.bottom_fraction}]",
    ):
        assert default in text, default


def test_version_names_the_distribution():
    """--version prints the version and the distribution, which tells this project apart
    from the package index's other "deepconf"."""
    r = _run("--version")
    assert r.exit_code == 0
    assert deepconf.__version__ in r.output and DISTRIBUTION == "deepconf-orchestrator"
    assert DISTRIBUTION in r.output


@pytest.mark.parametrize(
    ("args", "says", "never"),
    [
        (["--budget", "-5"], "budget", "warmup"),
        (["--api", "foo"], "--api must be chat or completions", None),
        (["--api", "completions"], "--api applies to servers", None),
    ],
)
def test_bad_flags_name_only_what_is_wrong(args, says, never):
    """A negative budget is about the budget, not a warm-up nobody set; --api is checked in
    process too, where it cannot apply."""
    r = _run("solve", *args, "Compute 1+2.")
    assert r.exit_code == 1 and says in r.output
    assert never is None or never not in r.output.lower()


def test_server_down_without_model_says_start_the_server():
    """Nothing listening and no --model: the message is about the server, not --model."""
    r = _run("solve", "--base-url", "http://127.0.0.1:9/v1", "q")
    assert r.exit_code == 1
    assert "start the server or fix --base-url" in r.output and "pass --model" not in r.output


# --- the summary ----------------------------------------------------------------------------


def test_summary_puts_plain_majority_beside_deepconf(server):
    """The vote table has majority's count beside DeepConf's, and a line says plain majority
    answered 3 and disagrees with DeepConf's 7; --json carries the same."""
    args = ["solve", "--base-url", server.base_url, "--window", "8", "--budget", "48"]
    args += ["--warmup", "8", "--seed", "100"]
    shown = _run(*args, "What is 3+4?")
    assert shown.exit_code == 0, shown.output
    assert "majority traces" in shown.output
    assert re.search(r"plain majority over the \d+ answers .*: 3 \(disagrees with DeepConf's 7\)",
                     shown.output)  # fmt: skip
    record = json.loads(_run(*args, "--json", "What is 3+4?").stdout)
    assert record["answer"] == "7"
    assert record["majority"]["answer"] == "3" and record["majority"]["agrees"] is False
    assert record["majority"]["votes"][0]["answer"] == "3"


def test_offline_summary_counts_offline_tokens(server):
    """Offline runs have no warm-up or online phase: the tokens line does not print them
    as zeros."""
    r = _run("solve", "--base-url", server.base_url, "--mode", "offline", "--budget", "6", "q")
    assert r.exit_code == 0
    assert "warm-up 0" not in r.output and re.search(r"tokens: [\d,]+ \(6 traces", r.output)


def test_serve_deepconf_object_carries_majority():
    """`deepconf serve`'s deepconf object puts plain majority beside DeepConf (one field,
    built from the same result)."""
    from deepconf.result import SolveResult, TokenTotals
    from deepconf.voting import VoteRow

    result = SolveResult(
        answer="7",
        votes=[VoteRow("7", 2, 30.0)],
        beta=1.0,
        threshold=14.0,
        tokens=TokenTotals(warmup=10),
        wall_time=0.1,
        traces=[],
        stop_reason="consensus",
        fallback=None,
        methods={"deepconf": "7", "majority": "3"},
        mode="online",
        variant="low",
        majority_votes=[VoteRow("3", 3, 3.0), VoteRow("7", 2, 2.0)],
    )
    assert summary(result, None, None)["majority"] == {
        "answer": "3",
        "agrees": False,
        "votes": [
            {"answer": "3", "count": 3, "weight": 3.0},
            {"answer": "7", "count": 2, "weight": 2.0},
        ],
    }


def test_no_answer_exits_1_saying_the_token_budget_ran_out():
    """A token budget that runs out in the warm-up (the issue's was 500 against ~1,100
    needed) cancels every trace: the CLI says so and exits 1 (was exit 0, answer None).
    50 tokens: less than any one trace of this problem needs (75 or more), so no trace can
    end first whatever the timing."""
    r = _run("solve", "--token-budget", "50", "--seed", "0", "Compute 216+973+738-425-756-352.")
    assert r.exit_code == 1
    assert "no answer: the token budget (50) ran out" in r.output
    assert "none of the 16 warm-up traces reached its end" in r.output
    assert "Raise --token-budget or lower --warmup" in r.output


# --- traces, replay, eval ---------------------------------------------------------------------


def test_saved_traces_replay_with_a_gold_answer(server, tmp_path):
    """solve --save-traces records a problem id; replay takes the gold answer inline."""
    path = tmp_path / "t.jsonl"
    args = ["solve", "--base-url", server.base_url, "--mode", "offline", "--budget", "20"]
    r = _run(*args, "--window", "8", "--seed", "100", "--save-traces", str(path), "q")
    assert r.exit_code == 0 and "replay them with" in r.output
    pid = json.loads(path.read_text().splitlines()[0])["problem_id"]
    assert pid.startswith("prompt-")
    for gold in ("7", f"{pid}=7"):
        rep = _run("replay", str(path), "--gold", gold, "--warmup", "4", "--repeats", "4")
        assert rep.exit_code == 0, rep.output
        assert "deepconf-low" in rep.output and "majority@20" in rep.output
    missing = _run("replay", str(path))
    assert missing.exit_code == 1 and "--gold ANSWER" in missing.output


def test_replay_refuses_a_warmup_beyond_the_budget(server, tmp_path):
    """--warmup 100 with a pool of 20 traces cannot run (it reported +0.0%)."""
    path = tmp_path / "t.jsonl"
    args = ["solve", "--base-url", server.base_url, "--mode", "offline", "--budget", "20"]
    _run(*args, "--save-traces", str(path), "q")
    r = _run("replay", str(path), "--gold", "7", "--warmup", "100")
    assert r.exit_code == 1 and "--warmup 100 does not fit the trace budget 20" in r.output


def test_eval_notes_out_of_family_prompts_and_prints_wide(tmp_path):
    """A prompt template around the chain task leaves the bundled model's family (the
    README's own template scored 0% silently): eval says so. Piped, the report is 120
    columns wide, so its headers are whole ("accu…" before)."""
    template = "{problem}\\nPut the final answer in \\boxed{{}}."
    r = _run(
        "eval", "--dataset", "chain:difficulty=s1d1,count=1", "--prompt-template", template,
        "--methods", "majority", "--budget", "2", "--output", str(tmp_path / "o"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1 of 1 prompts are outside the bundled model's task family" in r.output
    assert "accuracy" in r.output and "Δ tokens vs majority" in r.output
    # Progress on a pipe is one plain line per problem, no bar redrawn with carriage returns.
    assert "eval 1/1" in r.output and "\r" not in r.output


def test_eval_says_when_it_resumes(tmp_path):
    """A rerun into the same folder says how many problems it finds done."""
    args = ["eval", "--dataset", "chain:difficulty=s1d1,count=2", "--methods", "majority"]
    args += ["--budget", "2", "--output", str(tmp_path / "o")]
    assert _run(*args, "--limit", "1").exit_code == 0
    r = _run(*args)
    assert r.exit_code == 0 and "resuming: 1/2 problems are already done" in r.output


def test_ctrl_c_says_interrupted_and_how_to_resume(monkeypatch, tmp_path):
    """Ctrl-C in solve says it was interrupted; in eval, also that a rerun resumes. Both
    exit 130, the shell's code for it."""

    def interrupted(coro):
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(deepconf.cli.asyncio, "run", interrupted)
    r = _run("solve", "--budget", "2", "Compute 1+2.")
    assert r.exit_code == 130 and "interrupted: no answer" in r.output
    monkeypatch.setattr(commands.asyncio, "run", interrupted)
    r = _run("eval", "--dataset", "chain:difficulty=s1d1,count=2", "--output", str(tmp_path))
    assert r.exit_code == 130 and "rerun the same command to resume" in r.output


# --- the shipped model's files ------------------------------------------------------------


def test_model_card_headings_stand_alone():
    """Every heading of the model card starts its own line ("## Limits## Limits" did not)."""
    card = Path(deepconf.__file__).parent / "backends" / "bundled_model" / "MODEL_CARD.md"
    if not card.exists():  # an editable install keeps backends/ beside deepconf/
        card = Path(deepconf.__file__).parent.parent / "backends/bundled_model/MODEL_CARD.md"
    text = card.read_text()
    assert "##" not in "".join(line[2:] for line in text.splitlines() if line.startswith("##"))


def test_training_defaults_are_the_shipped_models_run():
    """train's defaults and help are the command the shipped model was trained with, the one
    the README and model card quote (the help said 3000 steps / 60 min, the README 4000 / 55)."""
    pytest.importorskip("torch")
    from deepconf.backends.bundled import bundled_model_path
    from deepconf.eval.train import parse_args

    recorded = json.loads((bundled_model_path() / "training.json").read_text())["command"]
    args = parse_args(["--out", "x"])
    assert f"--steps {args.steps} --max-minutes {args.max_minutes:g}" in recorded
