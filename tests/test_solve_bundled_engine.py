"""`deepconf solve` on the numpy engine, two ways: over HTTP against `serve-model`, and in
process through BundledBackend (`--model FOLDER` without `--base-url`).

A random tiny checkpoint rarely emits EOS early, so most traces run to max_tokens and none
writes an answer (the CLI then exits 1, saying why); its confidence varies from trace to
trace, so DeepConf-low's threshold (the 90th percentile of the warm-up) prunes most online
traces once their window fills.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from support.live_server import LoopbackServer
from support.lockstep import Lockstep
from support.tiny_model import write_tiny_model
from typer.testing import CliRunner

import deepconf.cli
from deepconf.backends.bundled import load_engine
from deepconf.backends.model_server import create_app
from deepconf.cli import app

FLAGS = [
    "--window", "6", "--budget", "16", "--warmup", "4", "--max-tokens", "MAX",
    "--temperature", "1.0", "--top-p", "1.0", "--seed", "0", "--tau", "1.0", "--json",
]  # fmt: skip
LEAD = 2  # tokens the gated server may run ahead of what the client received


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


@pytest.fixture
def gated(checkpoint, monkeypatch):
    """serve-model whose engine is held in lockstep with the CLI's reading (support.lockstep),
    and the CLI's backend reporting what it receives."""
    gate = Lockstep(lead=LEAD)
    engine, tok, name, _ = load_engine(checkpoint, max_batch=16, max_len=512)
    gate.install(engine)
    real = deepconf.cli.backend_from_flags
    monkeypatch.setattr(
        deepconf.cli, "backend_from_flags", lambda *a, **k: gate.counting(real(*a, **k))
    )
    srv = LoopbackServer(create_app(engine, tok, model_name=name)).start()
    yield srv
    srv.stop()
    engine.close()


def _solve(*args: str, max_tokens: int = 24) -> dict:
    flags = [str(max_tokens) if f == "MAX" else f for f in FLAGS]
    result = CliRunner().invoke(app, ["solve", *args, *flags, "What is 2+3?"])
    record = json.loads(result.stdout)
    # A random model writes no answer: exit 1 with the reason (exit 0 vouches for an answer).
    assert result.exit_code == (0 if record["answer"] is not None else 1), result.output
    return record


def _settled(server: LoopbackServer) -> dict:
    """The server's counters once it holds no request: each ended as finished or aborted.
    Polled, never timed: the loop's bound only stops a hang from hanging the suite."""
    for _ in range(12_000):
        counters = server.metrics()
        if counters["requests_running"] == counters["requests_waiting"] == 0:
            return counters
        time.sleep(0.01)
    raise AssertionError(f"the server still holds requests: {counters}")


def test_solve_over_serve_model_closes_pruned_traces_on_the_server(gated):
    """Every pruned trace is a request the server aborted, and every other one a request it
    finished: the server's own counters match the client's record one for one, and the
    server generated what the client received plus at most LEAD + 1 tokens per pruned trace.

    Counted, not timed: the lockstep gate keeps the engine at most LEAD tokens ahead of the
    client, so a pruned request (cut at a 6-token window, far from max_tokens 400) cannot
    finish before its abort; --no-probe leaves only the traces' own requests to count."""
    before = gated.metrics()
    record = _solve("--base-url", gated.base_url, "--no-probe", max_tokens=400)
    after = _settled(gated)
    counted = ("requests_total", "requests_aborted", "requests_finished", "tokens_generated")
    delta = {k: after[k] - before[k] for k in counted}
    traces = record["traces"]
    pruned = [t for t in traces if t["status"] == "pruned"]
    ended = [t for t in traces if t["status"] in ("completed", "truncated")]
    assert pruned, "a random model's online traces should fall below the 90th percentile"
    assert len(pruned) + len(ended) == len(traces), "no trace failed or was cancelled"
    assert delta["requests_total"] == len(traces)
    assert delta["requests_aborted"] == len(pruned)
    assert delta["requests_finished"] == len(ended)
    total = record["tokens"]["total"]
    assert total <= delta["tokens_generated"] <= total + (LEAD + 1) * len(pruned)


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


def test_in_process_and_http_traces_agree(checkpoint, served, tmp_path):
    """Same seeds, same engine: the warm-up traces' seeds, token counts and texts are equal in
    process and over HTTP, and so are their token confidences, except where the sampled token
    fell outside the top k: vLLM's chat shape (which serve-model keeps) then lists it in place
    of rank k, so over HTTP that position averages a lower logprob and its confidence is
    higher. Hence HTTP >= in process at every position (equal at most) and for the threshold.
    """
    local_all = _traces("--model", str(checkpoint), out=tmp_path / "local.jsonl")
    remote_all = _traces("--base-url", served.base_url, out=tmp_path / "remote.jsonl")
    local, remote = (
        [t for t in every if t["phase"] == "warmup"] for every in (local_all, remote_all)
    )
    assert len(local) == 4 and [(t["seed"], t["tokens"], t["text"]) for t in local] == [
        (t["seed"], t["tokens"], t["text"]) for t in remote
    ]
    here = np.concatenate([t["token_confs"] for t in local])
    there = np.concatenate([t["token_confs"] for t in remote])
    rounding = 2e-4  # token confidences are saved to 4 decimals
    assert np.all(there >= here - rounding)
    same = np.abs(there - here) <= rounding
    assert same.mean() >= 0.9, f"{same.sum()} of {same.size} positions agree"
    threshold = (
        {t["threshold"] for t in local_all if t["phase"] == "online"},
        {t["threshold"] for t in remote_all if t["phase"] == "online"},
    )
    assert len(threshold[0]) == len(threshold[1]) == 1
    assert threshold[1].pop() >= threshold[0].pop() - rounding


def _traces(*args: str, out) -> list[dict]:
    """The solve's saved trace records, by seed."""
    flags = [str(24) if f == "MAX" else f for f in FLAGS if f != "--json"]
    CliRunner().invoke(app, ["solve", *args, *flags, "--save-traces", str(out), "What is 2+3?"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return sorted((r for r in records if "seed" in r), key=_seed)


def _seed(trace: dict) -> int:
    return trace["seed"]
