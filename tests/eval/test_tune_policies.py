"""The item-4 criterion and the validation pick of eval.tune_policies."""

from __future__ import annotations

from deepconf.eval.compare import PolicyRow
from deepconf.eval.tune_policies import meets, pick


def row(name: str, accuracy: float, tokens: float) -> PolicyRow:
    return PolicyRow(name, accuracy, accuracy, accuracy, tokens, 1.0, None, 100, 64)


MAJORITY = row("majority", 0.74, 1000.0)


def test_criterion_needs_sixty_percent_fewer_tokens_and_at_most_one_point_lost() -> None:
    assert meets(row("a", 0.73, 400.0), MAJORITY)  # exactly at both bars
    assert not meets(row("b", 0.729, 400.0), MAJORITY)  # 1.1 points lost
    assert not meets(row("c", 0.80, 401.0), MAJORITY)  # 59.9% saved


def test_pick_prefers_the_most_accurate_policy_that_meets_the_criterion() -> None:
    rows = [MAJORITY, row("cheap", 0.735, 200.0), row("best", 0.74, 390.0), row("x", 0.9, 900)]
    assert pick(rows) == (rows[2], True)


def test_without_a_policy_meeting_it_the_pick_says_so() -> None:
    """None meets it: the most accurate within the token bar is reported, flagged."""
    rows = [MAJORITY, row("low", 0.69, 350.0), row("lower", 0.60, 100.0), row("x", 0.9, 900)]
    assert pick(rows) == (rows[1], False)


def test_record_then_measure_end_to_end(tmp_path, capsys) -> None:
    """`record` writes a replayable pool and its gold per problem; `measure` tunes on one
    folder and measures on another, printing both tables and the verdict."""
    from deepconf.eval.tune_policies import main

    for split in ("validation", "test"):
        main(["record", "--split", split, "--difficulty", "s2d1", "--count", "2", "--budget", "4",
              "--out", str(tmp_path / split)])  # fmt: skip
        assert len(list((tmp_path / split / "traces").glob("*.offline.jsonl"))) == 2
        assert len((tmp_path / split / "gold.jsonl").read_text().splitlines()) == 2
    main(["measure", "--validation", str(tmp_path / "validation"), "--test", str(tmp_path / "test"),
          "--budget", "4", "--orders", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "## validation: 2 problems, 2 orders" in out and "## test: 2 problems" in out
    assert "pick: " in out and "the criterion" in out.splitlines()[-1]
