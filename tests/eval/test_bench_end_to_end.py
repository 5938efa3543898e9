"""Smoke test of `deepconf bench stream --end-to-end` at a tiny size: it starts the replay
server, runs `deepconf solve` (with its C parts and without) and the openai SDK client as
processes, and prints each figure and the ratios. The figures themselves are measured by
running the benchmark (the README's benchmark section), not here: no speed is asserted."""

from __future__ import annotations

import re

import pytest

from deepconf.eval import bench_stream


@pytest.mark.slow
def test_the_end_to_end_benchmark_prints_every_client_and_the_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """4 traces x 50 tokens: each client counted all 200 tokens (with the server's CPU in
    the same span beside it), and the ratios are printed."""
    argv = ["--end-to-end", "--traces", "4", "--tokens", "50", "--repeats", "1"]
    bench_stream.main([*argv, "--token-delay", "0.001", "--events-per-write", "2"])
    out = capsys.readouterr().out
    assert "4 traces x 50 tokens" in out and "one event per 0.001 s, 2 event(s) per write" in out
    number = r"\s+[\d.]+"
    for client in ("deepconf solve", "without C", "openai SDK"):
        cells = rf"^\s+{client}\s+200{number}{number}\s+[\d,]+{number}\s"
        assert re.search(cells, out, re.M), out
    assert re.search(r"deepconf / SDK: [\d.]+x tokens per CPU-second", out), out
    assert re.search(r"deepconf / deepconf without C \(DEEPCONF_NO_C=1\): [\d.]+x", out), out
