"""Smoke test of `deepconf bench stream --end-to-end` at a tiny size: it starts the replay
server, runs `deepconf solve` and the openai SDK client as processes, and prints both
figures and their ratio. The figures themselves are measured by running the benchmark (the
README's benchmark section), not here: no speed is asserted."""

from __future__ import annotations

import re

import pytest

from deepconf.eval import bench_stream


@pytest.mark.slow
def test_the_end_to_end_benchmark_prints_both_clients_and_a_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """4 traces x 50 tokens: each client counted all 200 tokens, and the ratio is printed."""
    bench_stream.main(["--end-to-end", "--traces", "4", "--tokens", "50", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "4 traces x 50 tokens" in out
    for client in ("deepconf solve", "openai SDK"):
        assert re.search(rf"^\s+{client}\s+200\s+[\d.]+\s+[\d.]+\s+[\d,]+\s", out, re.M), out
    assert re.search(r"deepconf / SDK: [\d.]+x tokens per CPU-second", out), out
