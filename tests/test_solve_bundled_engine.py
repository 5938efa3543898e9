"""`deepconf solve` on the numpy engine, two ways: over HTTP against `serve-model`, and in
process through BundledBackend (`--model FOLDER` without `--base-url`).

A random tiny checkpoint never emits EOS early, so every trace runs to max_tokens; its
confidence varies from trace to trace, so DeepConf-low's threshold (the 90th percentile of
the warm-up) prunes most online traces once their window fills.
"""

from __future__ import annotations

import json
import time

import pytest
from support.live_server import LoopbackServer
from support.tiny_model import write_tiny_model
from typer.testing import CliRunner

from deepconf.backends.bundled import load_engine
from deepconf.backends.model_server import create_app
from deepconf.cli import app

FLAGS = [
    "--window", "6", "--budget", "16", "--warmup", "4", "--max-tokens", "MAX",
    "--temperature", "1.0", "--top-p", "1.0", "--seed", "0", "--tau", "1.0", "--json",
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def served(checkpoint):
    engine, tok, name, _ = load_engine(checkpoint, max_batch=16, max_len=256)
    srv = LoopbackServer(create_app(engine, tok, model_name=name)).start()
    yield srv
    srv.stop()
    engine.close()


def _solve(*args: str, max_tokens: int = 24) -> dict:
    flags = [str(max_tokens) if f == "MAX" else f for f in FLAGS]
    result = CliRunner().invoke(app, ["solve", *args, *flags, "What is 2+3?"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_solve_over_serve_model_closes_pruned_traces_on_the_server(served):
    """Every pruned trace is a request the server saw aborted (a closed stream), and it
    stopped generating for it: the server generated about what the client received.

    max_tokens is far beyond the prune point (the window fills at token 6), so no pruned
    trace can have finished on the server before the client closed it."""
    before = served.metrics()
    record = _solve("--base-url", served.base_url, max_tokens=400)
    pruned = [t for t in record["traces"] if t["status"] == "pruned"]
    assert pruned, "a random model's online traces should fall below the 90th percentile"
    assert all(t["tokens"] < 400 for t in pruned)
    # The server notices a disconnect within a decode step or so: wait for it.
    deadline = time.monotonic() + 10
    while (after := served.metrics())["requests_running"] > 0:
        assert time.monotonic() < deadline, "aborted requests kept running on the server"
        time.sleep(0.02)
    assert after["requests_aborted"] - before["requests_aborted"] >= len(pruned)
    # Beyond what the client received, the server spent only the probe's few tokens and a
    # few steps per aborted trace: not the 400 - tokens each pruned trace had left.
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert (
        record["tokens"]["total"] <= generated <= record["tokens"]["total"] + 8 + 10 * len(pruned)
    )


def test_same_solve_runs_in_process(checkpoint):
    """Without --base-url the same solve runs on BundledBackend in process, with the same
    algorithm: warm-up traces complete, online traces get pruned, tokens are accounted."""
    record = _solve("--model", str(checkpoint))
    phases = {t["phase"] for t in record["traces"]}
    assert phases == {"warmup", "online"}
    statuses = [t["status"] for t in record["traces"]]
    assert statuses.count("pruned") > 0
    warmup = [t for t in record["traces"] if t["phase"] == "warmup"]
    assert len(warmup) == 4 and all(t["status"] == "truncated" for t in warmup)
    assert record["tokens"]["total"] == sum(t["tokens"] for t in record["traces"])


def test_in_process_and_http_traces_agree(checkpoint, served):
    """Same seeds, same engine: the warm-up traces' token counts and confidences (hence the
    threshold) are the same in process and over HTTP."""
    local = _solve("--model", str(checkpoint))
    remote = _solve("--base-url", served.base_url)
    assert local["threshold"] == pytest.approx(remote["threshold"], rel=1e-3)
