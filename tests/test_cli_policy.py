"""`deepconf solve`'s policy flags through typer's runner, against the scripted server:
the summary and --json name the policy that decided (so `--policy X` visibly ran X), and
--keep-percent sets the warm-up filter's eta live.

Scenario (as tests/test_cli_newcomer.py): 60% of traces drift to low confidence and answer
3, 40% stay confident and answer 7.
"""

from __future__ import annotations

import json

import numpy as np
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

from deepconf.cli import app
from deepconf.voting import tolerant_threshold

WORDS = " ".join(f"w{i}" for i in range(60))
DEEPCONF_LOW = (
    "policy: deepconf-low (warm-up 8; weighted by lowest-group confidence; prune traces below"
    " the warm-up's top-10% cut; stop at consensus >= 0.95)"
)


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


def _solve(server: ScriptedServer, *flags: str):
    args = ["solve", "--base-url", server.base_url, "--window", "8", "--budget", "48"]
    if "offline" not in flags:
        args += ["--warmup", "8"]  # offline refuses it
    result = CliRunner().invoke(app, [*args, "--seed", "100", *flags, "q"])
    assert "Traceback" not in result.output
    return result


def _flat(text: str) -> str:
    """The output with rich's line wrapping undone (it wraps at spaces)."""
    return " ".join(text.split())


def test_the_summary_names_the_default_policy(server) -> None:
    """No --policy: the summary says DeepConf-low decided, with its warm-up, vote, filter
    and stop rule; --json records the same parts."""
    shown = _solve(server)
    assert shown.exit_code == 0, shown.output
    assert DEEPCONF_LOW in _flat(shown.output)
    record = json.loads(_solve(server, "--json").stdout)
    assert record["policy"] == {
        "name": "deepconf-low",
        "warmup": "warm-up 8",
        "vote": "weighted by lowest-group confidence",
        "filter": "prune traces below the warm-up's top-10% cut",
        "stop": "stop at consensus >= 0.95",
    }


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        ("esc", "policy: esc (warm-up 1; plain count; no filter; stop when a window of 8"
         " answers agrees)"),
        ("dirichlet", "policy: dirichlet (warm-up 1; plain count; no filter; stop at Dirichlet"
         " P(leader is the majority) >= 0.95 from 4 votes)"),
        ("cisc", "policy: cisc (warm-up 8; weighted by softmax(lowest-group confidence / 1); no"
         " filter; stop at consensus >= 0.95)"),
    ],
)  # fmt: skip
def test_a_chosen_policy_is_the_one_shown(server, policy: str, line: str) -> None:
    """--policy X: the summary's policy line and --json's policy name are X's."""
    shown = _solve(server, "--policy", policy)
    assert shown.exit_code == 0, shown.output
    assert line in _flat(shown.output)
    assert json.loads(_solve(server, "--policy", policy, "--json").stdout)["policy"]["name"] == (
        policy
    )


def test_keep_percent_runs_live_and_is_named(server) -> None:
    """--keep-percent 30: the threshold is the tolerant 70th percentile of the warm-up
    traces' lowest-group confidences, interpolated between a drifter's and a confident
    trace's (so it is neither --variant low's 90th nor -high's 10th), and the policy is
    named for its eta, not for the variant."""
    r = _solve(server, "--keep-percent", "30", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    lowest = [t["metrics"]["lowest"] for t in record["traces"] if t["phase"] == "warmup"]
    assert len(lowest) == 8 and len(set(lowest)) == 2  # 5 drifters, 3 confident
    assert record["threshold"] == tolerant_threshold(float(np.percentile(lowest, 70)))
    assert min(lowest) < record["threshold"] < max(lowest)
    assert record["policy"]["name"] == "deepconf (η=30)"
    assert record["policy"]["filter"] == "prune traces below the warm-up's top-30% cut"
    shown = _solve(server, "--keep-percent", "30")
    assert "policy: deepconf (η=30) (warm-up 8;" in _flat(shown.output)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--keep-percent", "0"], "--keep-percent must be above 0 and at most 100, got 0.0"),
        (["--keep-percent", "150"], "--keep-percent must be above 0 and at most 100, got 150.0"),
        (["--keep-percent", "nan"], "--keep-percent must be above 0 and at most 100, got nan"),
        (
            ["--policy", "esc", "--keep-percent", "50"],
            "policy 'esc' has none (every trace with an answer votes): drop --keep-percent",
        ),
        (
            ["--mode", "offline", "--keep-percent", "50"],
            "offline, the keep percent is part of --offline-method (e.g. tail@10 or tail@90)",
        ),
    ],
)
def test_a_keep_percent_that_cannot_apply_is_refused(server, flags: list[str], says: str) -> None:
    """Exit 1 before any trace runs, with a message saying what to change."""
    r = _solve(server, *flags)
    assert r.exit_code == 1
    assert says in _flat(r.output)
    assert not any(s for s in server.streams)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--policy", "beta"],
            "policy 'beta' decides online (who votes, when to stop); offline runs every trace"
            " and answers with --offline-method (majority, tail@10, ...): drop --policy, or"
            " use --mode online",
        ),
        (["--variant", "high"], "--variant applies to online runs only; offline runs every"),
        (["--tau", "0.9", "--warmup", "2"], "--tau, --warmup apply to online runs only;"),
    ],
)
def test_offline_refuses_the_online_choices_instead_of_ignoring_them(
    server, flags: list[str], says: str
) -> None:
    """--mode offline with --policy, --variant, --tau or --warmup would run without them:
    exit 1 before any trace runs, naming the flags and what to use instead."""
    r = _solve(server, "--mode", "offline", *flags)
    assert r.exit_code == 1
    assert says in _flat(r.output)
    assert not any(s for s in server.streams)


def test_the_offline_summary_names_its_method(server) -> None:
    r = _solve(server, "--mode", "offline", "--budget", "6")
    assert r.exit_code == 0, r.output
    assert "offline method: tail@10 (every trace ran to its end, then voted)" in _flat(r.output)


def test_serve_refuses_a_bad_keep_percent_before_it_starts() -> None:
    """`deepconf serve --keep-percent` sets the server's default eta, checked at start."""
    r = CliRunner().invoke(
        app, ["serve", "--upstream", "http://127.0.0.1:9/v1", "--keep-percent", "-1"]
    )
    assert r.exit_code == 1
    assert "--keep-percent must be above 0 and at most 100, got -1.0" in _flat(r.output)
