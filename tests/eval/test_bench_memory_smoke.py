"""Smoke tests of `deepconf bench memory` at a tiny size: it starts the replay servers, runs
the big solve and the many-in-flight client as processes, reads their peak RSS and checks
its bounds. The figures themselves are measured by running the benchmark at full size, not
here: no memory or time figure is asserted, only that the numbers agree with each other."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from deepconf.eval import bench_memory

TINY = ["--traces", "8", "--tokens", "200", "--concurrency", "4"]
# 20 tokens 0.05 s apart: each stream stays open for 1 s, while all 40 open within a few ms.
TINY += ["--solves", "2", "--per-solve", "20", "--flight-tokens", "20", "--token-delay", "0.05"]


def figure(out: str, label: str) -> str:
    found = re.search(rf"^\s+{label}\s+(.+)$", out, re.MULTILINE)
    assert found is not None, f"no {label!r} line in:\n{out}"
    return found.group(1)


@pytest.mark.slow
def test_both_parts_complete_and_their_numbers_agree(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """8 traces x 200 tokens: every token counted and one trace-file line per trace; 2 solves
    x 20 traces paced at 0.05 s a token: all 40 open at once; each peak RSS is a positive
    figure within its bound.

    Run as its own small process, as users run it: Linux counts the address space a child
    was forked from (before its exec) in the child's ru_maxrss, so children forked from this
    test process (over 1 GB once the parity tests have run) would report its size."""
    done = subprocess.run(
        [sys.executable, "-m", "deepconf.eval.bench_memory", *TINY],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # not the checkout: its deepconf/ folder would shadow the package
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert figure(out, "tokens generated").startswith("1,600 (of 1,600)")
    assert figure(out, "trace lines at the end") == "8"
    assert figure(out, "most traces in flight at once") == "40 (target 40)"
    for label in ("peak RSS of the solve", "peak RSS of the client"):
        mb = re.match(r"([\d,.]+) MB \(bound [\d,]+ MB: ok\)", figure(out, label))
        assert mb is not None and float(mb.group(1).replace(",", "")) > 0, out
    assert "all bounds hold" in out


@pytest.mark.slow
def test_a_bound_exceeded_exits_1_and_names_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """No Python process fits in 1 MB: both parts fail their bound, and the reasons name the
    flag of each."""
    with pytest.raises(SystemExit) as exited:
        bench_memory.main([*TINY, "--solve-max-rss-mb", "1", "--flight-max-rss-mb", "1"])
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "EXCEEDED" in figure(out, "peak RSS of the solve")
    assert re.search(r"peak RSS [\d,.]+ MB exceeds the --solve-max-rss-mb bound 1 MB", out)
    assert re.search(r"peak RSS [\d,.]+ MB exceeds the --flight-max-rss-mb bound 1 MB", out)
    assert "all bounds hold" not in out
