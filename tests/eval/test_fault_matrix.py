"""The fault matrix against the scripted server: no fault a real server has shown makes
deepconf answer wrongly, print a NaN, count a cut trace, or hang; each structural fault on
every trace fails the solve with a message naming its cause."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deepconf.eval.fault_matrix import FAULTS, run_fault

# What the error must name when the fault hits every trace.
CAUSES = {
    "done-no-finish": "ended with [DONE] but no finish reason",
    "clean-close": "without a finish reason or [DONE]",
    "reset": "broke mid-trace",
    "in-stream-error": "error mid-stream",
    "null-logprobs": "text without logprobs",
    "usage-mismatch": "completion tokens but sent logprobs for",
    "nan-logprob": "NaN as a logprob at token",
    "keepalive-stall": "(--timeout)",
    "silent-stall": "(--timeout)",
    "slow-trace": "(--trace-timeout)",
    "html-200": "text/html (an error page?)",
    "endless-line": "MiB",
    "rate-limited": "rate limiting (429)",
    "interrupt": "--interrupt_requests false",
}
# Faults that corrupt values, not streams: sanitised, so the solve answers.
SANITISED = {"healthy", "huge-logprobs", "positive-logprobs", "dead-peer"}

ROWS = [
    (fault, every)
    for fault in FAULTS
    for every in ([True] if fault.every_trace_only else [True, False])
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "every"), ROWS, ids=[f"{f.name}-{'all' if e else 'some'}" for f, e in ROWS]
)
async def test_fault_is_answered_right_or_fails_loudly(fault, every, tmp_path: Path) -> None:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    row = await run_fault(fault, every, tmp_path)
    assert row.verdict in ("answered", "failed loudly"), row
    launched = row.accounted.split("/")[1]
    assert row.accounted == f"{launched}/{launched}", row  # every launched trace recorded
    if fault.name in SANITISED or not every:
        assert row.verdict == "answered", row
    elif fault.name == "interrupt":
        # Honest either way: cut traces fail, and a solve that gives up names the fix.
        assert row.verdict == "answered" or CAUSES["interrupt"] in row.detail, row
    else:
        assert row.verdict == "failed loudly", row
        assert CAUSES[fault.name] in row.detail, row
