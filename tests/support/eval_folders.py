"""An eval folder read back for comparison: results and trace files without the clock.

Two eval runs on the same seeds (one worker or several, whole or sharded and merged) must
write the same folder up to wall times; these readers drop exactly those fields.

    assert records(whole) == records(merged) and trace_files(whole) == trace_files(merged)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def records(folder: Path) -> dict[str, Any]:
    """results.jsonl by problem, without the wall times (the clock's, not the run's)."""
    out = {}
    for text in (folder / "results.jsonl").read_text().splitlines():
        line = json.loads(text)
        for run in line["runs"].values():
            del run["wall_time"]
        out[line["problem_id"]] = line
    return out


def trace_files(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trace file's records by index, without elapsed times."""
    out = {}
    for path in sorted((folder / "traces").iterdir()):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for row in rows:
            del row["elapsed"]
        out[path.name] = sorted(rows, key=lambda r: r["index"])
    return out
