"""Answer-only samples and the policy comparison: samples replay like traces for the rules
that need no confidence, the table is paired and measured against majority@N, and
`deepconf replay` prints it for samples and gold files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from deepconf.cli import app
from deepconf.config import POLICY_NAMES
from deepconf.errors import ConfigError
from deepconf.eval.compare import (
    PolicyRow,
    compare_policies,
    default_policies,
    pareto_front,
    sweep_policies,
)
from deepconf.eval.replay import Pool, PoolTrace, simulate_policy
from deepconf.eval.samples import is_gold_file, is_samples_file, load_gold_file, load_samples
from deepconf.policies import named_policy


def write_samples(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def random_problem(rng: np.random.Generator, pid: str, n: int, p_right: float) -> list[dict]:
    rows = []
    for _ in range(n):
        u = rng.random()
        answer = "7" if u < p_right else (None if u > 0.95 else str(rng.choice(["3", "5"])))
        rows.append({"problem_id": pid, "answer": answer, "tokens": int(rng.integers(1, 500))})
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_samples_replay_exactly_like_traces_for_answer_only_rules(
    seed: int, tmp_path: Path
) -> None:
    """A pool read from answer-only samples and a pool of full traces with the same answers
    and lengths give every rule that needs no confidence the same answer, tokens, traces
    and stop: the samples lose nothing those rules read."""
    rng = np.random.default_rng(seed)
    rows = random_problem(rng, "p", 40, float(rng.choice([0.4, 0.8, 0.97])))
    samples = load_samples([write_samples(tmp_path / "s.jsonl", rows)])["p"]
    traces = [
        PoolTrace(r["answer"], np.full(int(r["tokens"]), 15.0))  # type: ignore[arg-type]
        for r in rows
    ]
    full = Pool("p", traces, {"window": 8})
    order = rng.permutation(40).tolist()
    answer_only = default_policies(answer_only=True) + sweep_policies(
        ["tau", "esc", "beta", "dirichlet", "beta-z"], answer_only=True
    )
    assert answer_only and all(not p.needs_confidence for p in answer_only)
    for policy in answer_only:
        for token_budget in (None, 3000):
            a = simulate_policy(samples.prepared(), order, policy, 32, token_budget)
            b = simulate_policy(full.prepared(), order, policy, 32, token_budget)
            assert a == b, policy.name


def test_answer_only_leaves_out_the_rules_that_need_confidence() -> None:
    names = {p.name for p in default_policies(answer_only=True)}
    assert names == {"majority", "tau", "esc", "beta", "dirichlet", "beta-z"}
    assert {p.name for p in default_policies(answer_only=False)} == set(POLICY_NAMES)


def test_sample_files_are_checked_line_by_line(tmp_path: Path) -> None:
    """A sample without tokens, or with negative tokens, is refused naming its line."""
    good = {"problem_id": "p", "answer": "1", "tokens": 3}
    bad = write_samples(tmp_path / "b.jsonl", [good, {"problem_id": "p", "answer": "2"}])
    with pytest.raises(ConfigError, match="line 2"):
        load_samples([bad])
    neg = write_samples(tmp_path / "n.jsonl", [{**good, "tokens": -1}])
    with pytest.raises(ConfigError, match="whole number"):
        load_samples([neg])
    assert is_samples_file(write_samples(tmp_path / "g.jsonl", [good]))
    gold = write_samples(tmp_path / "gold.jsonl", [{"problem_id": "p", "answer": 7}])
    assert is_gold_file(str(gold)) and not is_samples_file(gold)
    assert load_gold_file(str(gold)) == {"p": "7"}


def test_comparison_is_paired_and_measured_against_majority(tmp_path: Path) -> None:
    """majority@N is the zero of the token column; on problems where nearly every sample
    agrees, each stop rule keeps majority's accuracy at fewer tokens; a policy listed twice
    gets the same row (the orders are shared, not redrawn per policy)."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(5):
        rows += random_problem(rng, f"q{i}", 48, 0.97)
    pools = load_samples([write_samples(tmp_path / "s.jsonl", rows)])
    golds = {f"q{i}": "7" for i in range(5)}
    policies = [*default_policies(answer_only=True), named_policy("esc")]
    table = compare_policies(pools, golds, policies, budget=48, repeats=16)
    by = {r.policy: r for r in table[:-1]}
    assert by["majority"].delta_tokens == 0.0 and by["majority"].accuracy == 1.0
    for name in ("tau", "esc", "beta", "dirichlet", "beta-z"):
        assert by[name].accuracy == 1.0 and by[name].delta_tokens < 0  # type: ignore[operator]
    assert table[-1] == by["esc"]
    assert all(r.low <= r.accuracy <= r.high for r in table)


def test_unknown_sweep_and_missing_gold_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sweep"):
        sweep_policies(["nope"], answer_only=False)
    pools = load_samples(
        [write_samples(tmp_path / "s.jsonl", random_problem(np.random.default_rng(0), "p", 4, 0.5))]
    )
    with pytest.raises(ConfigError, match="no gold answer"):
        compare_policies(pools, {}, default_policies(answer_only=True), budget=4)


def test_replay_command_prints_the_policy_table_for_samples(tmp_path: Path) -> None:
    """`deepconf replay SAMPLES --answers GOLD --budget N` replays answer-only samples: the
    offline table has majority@N, the comparison every answer-only rule and the sweep."""
    rng = np.random.default_rng(1)
    rows = random_problem(rng, "a", 20, 0.9) + random_problem(rng, "b", 20, 0.5)
    samples = write_samples(tmp_path / "s.jsonl", rows)
    gold = write_samples(
        tmp_path / "gold.jsonl",
        [{"problem_id": "a", "answer": "7"}, {"problem_id": "b", "answer": "7"}],
    )
    args = ["replay", str(samples), "--answers", str(gold), "--budget", "16", "--repeats", "4"]
    r = CliRunner().invoke(app, [*args, "--sweep", "esc", "--output", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "majority@16" in r.output
    for name in ("| majority |", "| tau |", "| esc |", "| beta |", "| dirichlet |", "| beta-z |"):
        assert name in r.output
    assert "| esc (w=4) |" in r.output
    assert "deepconf-low" not in r.output
    saved = [json.loads(x) for x in (tmp_path / "out" / "policies.jsonl").read_text().splitlines()]
    assert [s["policy"] for s in saved][:6] == [
        "majority",
        "tau",
        "esc",
        "beta",
        "dirichlet",
        "beta-z",
    ]


row_strategy = st.builds(
    lambda i, acc, tok: PolicyRow(f"p{i}", acc, acc, acc, tok, 1.0, None, 1, 1),
    st.integers(0, 10**6),
    st.sampled_from([0.5, 0.6, 0.7, 0.8]),
    st.sampled_from([10.0, 20.0, 30.0, 40.0]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(row_strategy, max_size=12))
def test_pareto_front_is_exactly_the_undominated_policies(rows: list[PolicyRow]) -> None:
    """The front holds one policy for each undominated (tokens, accuracy) point, checked by
    brute force: no row has at most its tokens and at least its accuracy, better on one."""

    def dominated(r: PolicyRow) -> bool:
        return any(
            o.tokens <= r.tokens
            and o.accuracy >= r.accuracy
            and (o.tokens < r.tokens or o.accuracy > r.accuracy)
            for o in rows
        )

    front = pareto_front(rows)
    expected = {(r.tokens, r.accuracy) for r in rows if not dominated(r)}
    assert {(r.tokens, r.accuracy) for r in front} == expected
    assert len(front) == len(expected)


def test_plot_draws_the_pareto_front_of_a_replay_folder(tmp_path: Path) -> None:
    """`deepconf plot` on a replay --output folder with a policy comparison draws
    policy_pareto.png beside the accuracy plot."""
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(2)
    samples = write_samples(tmp_path / "s.jsonl", random_problem(rng, "a", 12, 0.8))
    out = tmp_path / "out"
    args = ["replay", str(samples), "--gold", "7", "--budget", "12", "--repeats", "2"]
    assert CliRunner().invoke(app, [*args, "--output", str(out)]).exit_code == 0
    r = CliRunner().invoke(app, ["plot", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "plots" / "policy_pareto.png").stat().st_size > 0
