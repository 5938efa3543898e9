"""Smoke test of `deepconf bench workers` at a tiny size: it starts the replay server, runs
the eval with 1 and 2 workers, reads back equal token counts and prints the ratio and how
busy the cores were. The
figure itself is measured by running the script, not here."""

from __future__ import annotations

import re

import pytest

from deepconf.eval import bench_workers


@pytest.mark.slow
def test_the_workers_benchmark_runs_both_sides_and_prints_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2 problems x 4 traces x 50 tokens: each side reads 400 tokens."""
    bench_workers.main(["--problems", "2", "--budget", "4", "--tokens", "50", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+([12])\s+[\d.]+\s+([\d,]+)\s", out, re.MULTILINE)
    assert rows == [("1", "400"), ("2", "400")]
    assert re.search(r"^throughput ratio, 2 workers over 1: [\d.]+ \(median of 1; each", out, re.M)
    assert re.search(
        r"^cores busy in the 2-worker runs: \d+%; their client CPU per token", out, re.M
    )
