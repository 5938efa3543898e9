"""Smoke tests of the serve benchmarks (`deepconf bench serve`, `deepconf bench hostile`) at a
tiny size: they start their processes, drive them, print their figures and clean up. The
figures themselves are measured by running the scripts, not here."""

from __future__ import annotations

import re

import pytest

from deepconf.eval import bench_hostile, bench_serve


@pytest.mark.slow
def test_the_load_test_runs_and_its_musts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    """24 requests from 4 clients: the table is printed, no 5xx, no stream left open."""
    bench_serve.main(["--clients", "4", "--requests", "24", "--warmup", "4", "--direct", "8"])
    out = capsys.readouterr().out
    assert "through serve" in out and "added by serve" in out
    assert re.search(r"5xx 0\b", out)
    assert "upstream streams still open at the end: 0" in out
    assert "all musts hold" in out


@pytest.mark.slow
def test_the_hostile_benchmark_runs_each_attack(capsys: pytest.CaptureFixture[str]) -> None:
    """A small slowloris (guarded only), 20 model names and a 10 MB body: each section
    prints its figures; the body is refused with 413 and the long prompt with 400."""
    args = ["--connections", "40", "--seconds", "1", "--file-limit", "256", "--compare", "0"]
    bench_hostile.main(["--only", "slowloris", *args])
    bench_hostile.main(["--only", "names", "--names", "20"])
    bench_hostile.main(["--only", "body", "--body-mb", "10"])
    out = capsys.readouterr().out
    assert "guarded, calm" in out and "guarded, attacked" in out and "guard:" in out
    assert "statuses [200]" in out and "backends open at the end" in out
    assert re.search(r"10 MB body, length declared\s+413", out)
    assert re.search(r"10 MB body, streamed \(chunked\)\s+413", out)
    assert re.search(r"7 MB prompt \(under the limit\)\s+400", out)
