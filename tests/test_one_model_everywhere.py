"""One prompt, one seed, one model: the same result through every door to the bundled model.

The README's quickstart problem, posed the natural way ("Compute ...."), goes through the
CLI in process, the Python API (`deepconf.solve` with a `BundledBackend`) and
`deepconf solve --base-url` against `deepconf serve-model`. Each applies the model card's
window, tail and sampling (the CLI from deepconf.json or from what the server advertises,
the API from the backend's card) and each renders the prompt with the model's chat template,
so all three give the same answer, threshold and traces (each ended, or pruned at
the same token).

Settings that make a result a function of the seeds alone: tau 1.0 (the solve stops right
after the warm-up when its voters all agree, else runs the whole budget), so no trace is
cancelled at a moment set by timing.
"""

from __future__ import annotations

import json
import re

import pytest
from support.live_server import LoopbackServer
from typer.testing import CliRunner

from deepconf import solve
from deepconf.backends.bundled import BundledBackend, load_engine
from deepconf.backends.model_server import create_app
from deepconf.cli import app
from deepconf.eval.quickstart import README_PROBLEM, gold_of

# Seed 1000: the warm-up does not agree, so the online phase runs and prunes (11 of 32).
FLAGS = ["--budget", "32", "--tau", "1.0", "--seed", "1000", "--json"]


@pytest.fixture(scope="module")
def served():
    engine, tok, name, card = load_engine(None, max_batch=64)
    srv = LoopbackServer(create_app(engine, tok, model_name=name, card=card)).start()
    yield srv
    srv.stop()
    engine.close()


def _fingerprint(record: dict) -> dict:
    """What must be equal across doors: the answer, majority's, the warm-up's tokens, and
    each trace's fate: tokens and answer of a trace that ran to its end, the prune point of
    a pruned one. (A pruned trace's own count also holds the tokens that arrived in the
    batch that pruned it, and how many arrive together is up to thread timing: the engine
    hands a slow reader everything decoded since its last read.)"""
    return {
        "answer": record["answer"],
        "majority": record["majority"]["answer"],
        "warmup_tokens": record["tokens"]["warmup"],
        "traces": [
            (t["index"], t["status"], t["pruned_at"])
            if t["status"] == "pruned"
            else (t["index"], t["status"], t["tokens"], t["answer"])
            for t in record["traces"]
        ],
    }


def test_cli_python_api_and_serve_model_give_one_result(served):
    """Same prompt, seed and settings: one answer, threshold and set of traces (each ended
    or pruned at the same token) in process (CLI), through the Python API, and over HTTP
    from serve-model.

    The threshold agrees to 1e-6: over HTTP the logprobs travel as JSON decimals and the
    engine rounds differently in other batches (noise near 1e-8 of the value)."""
    cli = CliRunner().invoke(app, ["solve", *FLAGS, README_PROBLEM])
    assert cli.exit_code == 0, cli.output
    in_process = json.loads(cli.stdout)

    api = solve(
        README_PROBLEM, backend=BundledBackend(), budget=32, tau=1.0, sampling={"seed": 1000}
    )
    through_api = json.loads(json.dumps(api.to_dict()))

    http = CliRunner().invoke(app, ["solve", "--base-url", served.base_url, *FLAGS, README_PROBLEM])
    assert http.exit_code == 0, http.output
    over_http = json.loads(http.stdout)

    assert _fingerprint(in_process) == _fingerprint(through_api) == _fingerprint(over_http)
    assert in_process["threshold"] == pytest.approx(through_api["threshold"], rel=1e-6)
    assert in_process["threshold"] == pytest.approx(over_http["threshold"], rel=1e-6)
    # Not a degenerate agreement: the model answered the natural prompt, and pruned.
    assert in_process["answer"] is not None and in_process["answer"].isdigit()
    assert {t["status"] for t in in_process["traces"]} == {"completed", "pruned"}


def test_the_quickstart_problem_is_in_the_family_and_its_answer_is_computed():
    """The README's problem is one the bundled model was trained on (uniform widths), and
    its right answer comes from arithmetic, not from a sample."""
    terms = re.findall(r"[+-]?\d+", README_PROBLEM)
    assert gold_of(README_PROBLEM) == str(sum(int(t) for t in terms))
