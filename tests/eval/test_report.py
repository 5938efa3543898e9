"""Report tables: aggregation per method, savings against majority, unparsed listing."""

from __future__ import annotations

import io

from rich.console import Console

from deepconf.eval.commands import write_report
from deepconf.eval.report import (
    Score,
    markdown_table,
    rich_table,
    summarise,
    unjudged_markdown,
    unjudged_of,
    unparsed_markdown,
)

SCORES = [
    Score("majority@8", "p1", 1.0, 800, "4", "correct"),
    Score("majority@8", "p2", 0.0, 1200, "5", "wrong"),
    Score("deepconf-low", "p1", 1.0, 200, "4", "correct"),
    Score("deepconf-low", "p2", 1.0, 400, "x^2+", "unparsed", 1),
    Score("pass@1", "p1", 0.75, 100),
    Score("pass@1", "p2", 0.5, 150),
    Score("tail@10", "p1", 0.0, 800, None, "no_answer"),
]


def test_summary_accuracy_tokens_and_savings() -> None:
    """Accuracy is the mean over problems, tokens the sum, savings 1 - tokens/majority's
    over the problems both have."""
    rows = {r.method: r for r in summarise(SCORES)}
    assert rows["majority@8"].accuracy == 0.5 and rows["majority@8"].tokens == 2000
    assert rows["majority@8"].saved == 0.0
    assert rows["deepconf-low"].accuracy == 1.0 and rows["deepconf-low"].saved == 0.7
    assert rows["pass@1"].accuracy == 0.625
    assert rows["tail@10"].saved == 0.0 and rows["tail@10"].no_answer == 1
    assert rows["deepconf-low"].unparsed == 1
    assert list(rows) == ["majority@8", "deepconf-low", "pass@1", "tail@10"]


def test_no_baseline_means_no_savings() -> None:
    """Without a majority method the savings column is empty, not invented."""
    rows = summarise([Score("pass@1", "p1", 1.0, 10)])
    assert rows[0].saved is None
    assert "—" in markdown_table(rows)


def test_tables_render_every_method_and_list_unparsed() -> None:
    """The rich and markdown tables carry every method; unparsed grades are listed."""
    rows = summarise(SCORES)
    md = markdown_table(rows)
    assert md.count("\n") == len(rows) + 2 and "| deepconf-low | 100.0% | 600 | -70.0% |" in md
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(rich_table(rows, title="t"))
    text = console.export_text()
    assert "deepconf-low" in text and "-70.0%" in text
    listing = unparsed_markdown(SCORES)
    assert "p2 [deepconf-low]: 'x^2+' -> right" in listing
    assert "All answers were parsed" in unparsed_markdown(SCORES[:2])


def test_votes_that_compared_answers_as_plain_text_are_named_in_the_report(tmp_path) -> None:
    """A run whose vote had answers math-verify did not judge (its summary's
    unjudged_answers) is listed in report.md by problem and run; runs without are not, and
    a report with none says nothing of it."""
    results = [
        {"problem_id": "p0", "runs": {"offline": {"unjudged_answers": 2}, "online-low": {}}},
        {"problem_id": "p1", "runs": {"offline": {"unjudged_answers": 0}}},
    ]
    assert unjudged_of(results) == [("p0", "offline", 2)]
    assert unjudged_markdown([]) == ""
    write_report(tmp_path, [], "t", Console(file=io.StringIO()), [], unjudged_of(results))
    report = (tmp_path / "report.md").read_text()
    assert (
        "1 vote(s) compared answers as plain text (math-verify ran out of time), so equal"
        " values written differently may have counted apart:\n\n- p0 [offline]: 2 answer(s)"
    ) in report
    assert "p1" not in report
