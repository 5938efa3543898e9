"""eval's run files survive torn writes: run.json (and report.md, summary.json) are written
atomically, so a kill -9 in the middle of a write leaves the old file or the new one; a
run.json that is empty, cut off or not an object (left by an older version, or edited) makes
`deepconf eval` exit 1 with a message that says what to do, never a JSONDecodeError."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepconf.cli import app
from deepconf.errors import ConfigError
from deepconf.eval.runner import check_manifest, write_atomic

EVAL = ["eval", "--dataset", "chain:difficulty=s6d2,count=2,seed=0", "--budget", "2"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "it is empty"),
        (b'{"dataset": "chain:diff', "Unterminated string"),
        (b"[1, 2]", "no settings object"),
    ],
    ids=["empty", "cut-off", "not-an-object"],
)
def test_an_unreadable_run_json_is_a_message_not_a_traceback(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """`deepconf eval` on a folder whose run.json cannot be read: exit 1, the file named,
    why, and the two ways on (delete it to resume, or a new --output)."""
    (tmp_path / "run.json").write_bytes(content)
    result = CliRunner().invoke(app, [*EVAL, "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "run.json cannot be read" in text and reason in text
    assert "Delete it" in text and "--output" in text
    assert "Traceback" not in result.output


def test_check_manifest_names_an_unreadable_file(tmp_path: Path) -> None:
    """The same at the API: a ConfigError, whatever the cut."""
    (tmp_path / "run.json").write_text('{"methods": ["majority"], "config": {"bud')
    with pytest.raises(ConfigError, match="cannot be read"):
        check_manifest(tmp_path, {"methods": ["majority"], "config": {"budget": 8}})


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    """The new text cannot be encoded (a lone surrogate): the write fails after the temporary
    file was opened, and the old run.json is untouched, no temporary file left beside it."""
    path = tmp_path / "run.json"
    write_atomic(path, json.dumps({"budget": 8}))
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, '{"budget": "\ud800"}')
    assert json.loads(path.read_text()) == {"budget": 8}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_kill_during_writes_leaves_a_whole_file(tmp_path: Path) -> None:
    """A process rewriting a 4 MB run.json over and over is killed (-9) while it writes: the
    file left is one whole version, never a torn one."""
    path = tmp_path / "run.json"
    child = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from deepconf.eval.runner import write_atomic
        path, pad = Path({str(path)!r}), "x" * 4_000_000
        for version in range(10_000):
            write_atomic(path, json.dumps({{"version": version, "pad": pad}}))
            print(version, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-P", "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # three whole versions written; the fourth is under way
            assert proc.stdout is not None and proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    manifest = json.loads(path.read_text())
    assert manifest["version"] >= 2 and len(manifest["pad"]) == 4_000_000
