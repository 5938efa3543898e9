"""Smoke test of `deepconf bench serve-workers` at a tiny size: serve with one worker and with
two in front of the replay servers, the openai client's requests through each, equal token
counts read back from the answers' usage, the ratio and the cores' use printed. The figure
itself is measured by running the script, not here."""

from __future__ import annotations

import re

import pytest

from deepconf.eval import bench_serve_workers


@pytest.mark.slow
def test_the_serve_workers_benchmark_runs_both_sides_and_prints_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """3 requests x 4 traces x 50 tokens: each side's answers report 600 completion tokens."""
    argv = ["--requests", "3", "--clients", "2", "--budget", "4", "--tokens", "50"]
    bench_serve_workers.main([*argv, "--repeats", "1", "--servers", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+([12])\s+[\d.]+\s+([\d,]+)\s", out, re.MULTILINE)
    assert rows == [("1", "600"), ("2", "600")]
    ratio = r"^throughput ratio, serve --workers 2 over 1: [\d.]+ \(median of 1; each"
    assert re.search(ratio, out, re.M)
    assert re.search(r"^cores busy in the 2-worker runs: \d+%", out, re.M)


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_serve_workers.main(["--workers", "1"])
    assert "--workers must be at least 2" in capsys.readouterr().err
