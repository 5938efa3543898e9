"""`deepconf doctor` against real loopback servers: the scripted server playing each fault a
real server has shown, and `serve-model` on the shipped model, where every check passes.

Each test names the server behaviour and the finding (verdict and fix) it must produce. The
scripted streams are paced (a few ms per token) so that streams overlap when the doctor
starts them together and a long stream is still running when the doctor closes it.
"""

from __future__ import annotations

import json
import socket

import pytest
from support.live_server import LoopbackServer
from support.scripted_server import Script, ScriptedServer
from typer.testing import CliRunner

from deepconf.backends.bundled import load_engine
from deepconf.backends.model_server import create_app
from deepconf.cli import app
from deepconf.doctor import DoctorSettings, Finding, Report, gap_ratios
from deepconf.doctor_probe import Gauge, Position, parse_metrics
from deepconf.doctor_run import diagnose
from deepconf.errors import ConnectError

TEXT = " ".join(f"w{i}" for i in range(60))  # longer than the doctor's short requests
REASONING = "Let me think about this step by step first."
FAST = {"throughput_streams": 4}  # the concurrent tokens/s check needs no 16 here


def paced(**kw) -> Script:
    kw.setdefault("delay", 0.003)
    return Script.from_text(kw.pop("text", TEXT), reasoning=kw.pop("reasoning", ""), **kw)


async def doctor(server: LoopbackServer, **settings) -> Report:
    return await diagnose(DoctorSettings(base_url=server.base_url, **FAST | settings))


def by_check(report: Report) -> dict[str, Finding]:
    return {f.check: f for f in report.findings}


def judged(report: Report) -> dict[str, str]:
    """Verdicts of every check but tokens/s, which are only required to be measured: their
    ratio (a warning below 1.2x) depends on how busy this machine is."""
    rates = [f for f in report.findings if f.check.startswith("tokens/s")]
    assert len(rates) == 2 and all(f.verdict != "unknown" for f in rates), rates
    return {f.check: f.verdict for f in report.findings if f not in rates}


# --- serve-model on the shipped model: everything passes -------------------------------------


@pytest.fixture(scope="module")
def served():
    engine, tok, name, _ = load_engine(None, max_batch=16)
    server = LoopbackServer(create_app(engine, tok, model_name=name)).start()
    yield server
    server.stop()
    engine.close()


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_serve_model_passes_every_check_including_abort(served, api):
    """serve-model streams vLLM's shapes with 20 raw logprobs per token, reports usage,
    batches concurrent streams and aborts a closed one (its /metrics requests_running falls,
    and its tokens_generated counter shows the request did not run on): every finding is ok,
    and the doctor says DeepConf is not wrong there."""
    report = await doctor(served, api=api, throughput_streams=16)
    assert not report.wrong
    assert set(judged(report).values()) == {"ok"}, report.findings
    found = by_check(report)
    assert found["logprob mode"].result.startswith("raw")
    assert found["abort on close"].result.startswith("stopped")
    assert report.model == "deepconf-bundled"


# --- the scripted server: healthy, then one fault at a time ----------------------------------


async def test_healthy_scripted_server_is_all_ok():
    """A server that streams k logprobs, usage, [DONE], serves streams together and stops a
    closed one (its vLLM-style gauge falls at once) gets ok on every check."""
    with ScriptedServer(paced()) as server:
        report = await doctor(server)
    assert set(judged(report).values()) == {"ok"}, report.findings
    assert by_check(report)["abort on close"].result.startswith("stopped")


async def test_interrupting_server_fails_with_the_interrupt_requests_fix():
    """llama-cpp-python's default (interrupt_requests=True) ends a running stream with a bare
    [DONE] when another request arrives. One stream at a time looks healthy; streams started
    together are cut, which is a FAIL that names --interrupt_requests false. (10 ms per
    token: each stream runs far longer than the others take to arrive.)"""
    with ScriptedServer(paced(delay=0.01), interrupt_when_busy=True) as server:
        report = await doctor(server)
    found = by_check(report)
    assert report.wrong
    assert found["streaming"].verdict == "ok"
    assert found["concurrent streams"].verdict == "FAIL"
    assert "[DONE] and no finish_reason" in found["concurrent streams"].result
    assert "--interrupt_requests false" in found["concurrent streams"].fix


async def test_short_top_logprobs_fail_and_name_max_logprobs():
    """A server capped below k (vLLM's --max-logprobs) sends 5 of the 20 asked: a FAIL whose
    fix names the server flag and the smaller --top-logprobs."""
    with ScriptedServer(paced(max_logprobs=5)) as server:
        report = await doctor(server)
    found = by_check(report)["top logprobs"]
    assert report.wrong and found.verdict == "FAIL"
    assert found.result.startswith("5 of 20")
    assert "--max-logprobs 20" in found.fix and "--top-logprobs 5" in found.fix


async def test_no_logprobs_fail():
    """Text without any logprobs (an API that returns none) is a FAIL: no confidence."""
    with ScriptedServer(paced(logprobs=False)) as server:
        report = await doctor(server)
    assert report.wrong
    assert by_check(report)["top logprobs"].result.startswith("none")


@pytest.mark.parametrize("value", [0.0, -9999.0])
async def test_placeholder_values_fail(value):
    """Logprobs that are all 0 or all -9999 (hosted APIs that fake them) are a FAIL."""
    with ScriptedServer(paced(placeholder=value)) as server:
        report = await doctor(server)
    found = by_check(report)["logprob values"]
    assert report.wrong and found.verdict == "FAIL" and "placeholders" in found.result


async def test_html_page_fails_streaming_and_leaves_the_rest_unknown():
    """A 200 with an HTML page is named as such (not an event stream) and nothing else is
    judged from it."""
    with ScriptedServer(paced(html=True)) as server:
        report = await doctor(server)
    first, *rest = report.findings
    assert report.wrong
    assert (first.check, first.verdict) == ("streaming", "FAIL")
    assert "text/html (an error page?)" in first.result
    assert {f.verdict for f in rest} == {"unknown"}


@pytest.mark.parametrize(
    ("script", "said"),
    [
        (dict(text="Hi there friend", finish_reason=None), "[DONE] but no finish_reason"),
        (dict(text="Hi there friend", finish_reason=None, end="close"), "without a finish"),
    ],
)
async def test_stream_without_finish_reason_fails(script, said):
    """A lone stream that ends by [DONE] or a close without a finish reason is cut short."""
    with ScriptedServer(paced(**script)) as server:
        report = await doctor(server)
    found = by_check(report)["streaming"]
    assert report.wrong and found.verdict == "FAIL" and said in found.result


async def test_stalled_stream_cannot_hang_the_doctor():
    """A stream that stops sending (kept alive by SSE comments) ends at the per-request
    timeout as a streaming FAIL instead of hanging the doctor."""
    with ScriptedServer(paced(stall_after=3, keepalive=0.05)) as server:
        report = await doctor(server, timeout=1.0)
    found = by_check(report)["streaming"]
    assert found.verdict == "FAIL" and "no end within 1 s" in found.result


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_sampled_token_appended_is_reported_and_fine(api):
    """llama.cpp-style k+1 entries (the sampled token added last) are seen and are ok: the
    fullest position still has k, and DeepConf keeps the k largest."""
    with ScriptedServer(paced(append_sampled=True)) as server:
        report = await doctor(server, api=api)
    found = by_check(report)
    assert not report.wrong
    assert found["top logprobs"].verdict == "ok"
    assert found["entry format"].verdict == "ok"
    assert "k+1 entries" in found["entry format"].result and "last" in found["entry format"].result


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_collapsed_token_strings_warn(api):
    """Entries whose token strings are equal collapse at some positions (llama.cpp): the
    fullest position still has k (ok), the short positions are a warning, not a FAIL."""
    with ScriptedServer(paced(collide_every=3)) as server:
        report = await doctor(server, api=api)
    found = by_check(report)
    assert not report.wrong
    assert found["top logprobs"].verdict == "ok"
    assert found["entry format"].verdict == "warn"
    assert "fewer than k" in found["entry format"].result


async def test_processed_logprobs_warn_and_raw_ones_pass():
    """Logprobs after temperature (SGLang's default) change between T=1 and T=0.5 with their
    gaps doubled: a warning about thresholds; raw ones are equal at both: ok."""
    with ScriptedServer(paced(logprob_mode="processed")) as server:
        processed = by_check(await doctor(server))["logprob mode"]
    with ScriptedServer(paced()) as server:
        raw = by_check(await doctor(server))["logprob mode"]
    assert processed.verdict == "warn" and processed.result.startswith("processed")
    assert "threshold" in processed.fix
    assert raw.verdict == "ok" and raw.result.startswith("raw")


async def test_usage_that_disagrees_with_the_counted_tokens_fails():
    """Usage that claims far fewer tokens than the logprob entries counted is a FAIL."""
    with ScriptedServer(paced(usage_tokens=5)) as server:
        report = await doctor(server)
    found = by_check(report)["usage"]
    assert report.wrong and found.verdict == "FAIL" and found.result.startswith("5 tokens")


async def test_usage_missing_is_a_warning():
    """No usage chunk (llama.cpp ignores include_usage; here the body ends after the last
    token) is a warning: DeepConf counts logprob entries but cannot cross-check them."""
    with ScriptedServer(paced(end="close")) as server:
        report = await doctor(server)
    assert by_check(report)["usage"].verdict == "warn"
    assert not report.wrong


async def test_reasoning_with_and_without_logprobs():
    """Reasoning deltas with logprobs are ok; reasoning deltas that lose them (a reasoning
    parser's bug) are a FAIL, since confidence would miss the reasoning."""
    with ScriptedServer(paced(reasoning=REASONING)) as server:
        kept = by_check(await doctor(server))["reasoning logprobs"]
    with ScriptedServer(paced(reasoning=REASONING, null_logprobs_after=2)) as server:
        lost = by_check(await doctor(server))["reasoning logprobs"]
    assert kept.verdict == "ok" and kept.result.startswith("all")
    assert lost.verdict == "FAIL" and "without logprobs" in lost.result


async def test_server_that_ignores_disconnects_is_flagged():
    """A server that keeps generating after the client closed (its running gauge stays up,
    here for seconds) is a warning: prunes would save no compute. The scripted stream runs
    6 s past the close, far beyond the 0.5 s the doctor is given."""
    script = paced(text=" ".join(f"w{i}" for i in range(300)), delay=0.02)
    with ScriptedServer(script, ignore_disconnect=True) as server:
        report = await doctor(server, abort_deadline=0.5, short_tokens=8)
    found = by_check(report)["abort on close"]
    assert found.verdict == "warn" and "still counted it" in found.result
    assert "prunes save no compute" in found.fix


async def test_unreachable_server_raises_connect_error():
    """Nothing listening: one clear ConnectError, before any check."""
    with pytest.raises(ConnectError, match="cannot reach"):
        await diagnose(DoctorSettings(base_url=f"http://127.0.0.1:{_free_port()}/v1"))


# --- the command -------------------------------------------------------------------------------


def test_cli_json_and_exit_status():
    """--json prints only the findings as JSON on stdout; exit 0 on a healthy server, 1 when
    a finding would make DeepConf wrong (streams cut when run together), 1 with a message on
    stderr when nothing listens."""
    runner = CliRunner()
    flags = ["doctor", "--json", "--timeout", "10"]
    with ScriptedServer(paced()) as server:
        healthy = runner.invoke(app, [*flags, "--base-url", server.base_url])
    with ScriptedServer(paced(delay=0.01), interrupt_when_busy=True) as server:
        cut = runner.invoke(app, [*flags, "--base-url", server.base_url])
    down = runner.invoke(app, [*flags, "--base-url", f"http://127.0.0.1:{_free_port()}/v1"])
    assert healthy.exit_code == 0, healthy.output
    body = json.loads(healthy.stdout)
    assert body["wrong"] is False and len(body["findings"]) == 11
    assert set(body["findings"][0]) == {"check", "result", "verdict", "fix"}
    assert cut.exit_code == 1 and json.loads(cut.stdout)["wrong"] is True
    assert down.exit_code == 1 and down.stdout == "" and "cannot reach" in down.stderr


def test_cli_table_names_each_check():
    """Without --json the findings print as a table with the check names and verdicts."""
    with ScriptedServer(paced()) as server:
        result = CliRunner().invoke(app, ["doctor", "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    for name in ("streaming", "top logprobs", "abort on close", "tokens/s, 16 streams"):
        assert name in result.stdout


# --- pure parts ----------------------------------------------------------------------------------


def test_gap_ratios_tell_raw_from_processed_on_shared_context_only():
    """Gaps between logprobs at T=0.5 are twice those at T=1 when processed, equal when raw;
    positions after the sampled tokens diverge are not compared."""
    top = [("a", -0.1), ("b", -2.0), ("c", -5.0)]
    doubled = [("a", -0.01), ("b", -3.81), ("c", -9.81)]
    first = [Position("a", top), Position("x", top), Position("a", top)]
    same = [Position("a", top), Position("y", top), Position("a", doubled)]
    assert gap_ratios(first, same) == pytest.approx([1.0, 1.0, 1.0, 1.0])  # 3rd not compared
    processed = [Position("a", doubled), Position("x", doubled)]
    assert gap_ratios(first, processed) == pytest.approx([2.0] * 4)


def test_parse_metrics_reads_each_servers_gauge():
    """vLLM's and SGLang's Prometheus gauges (summed over label sets) and serve-model's JSON
    counters become one Gauge; a page without a known gauge is None."""
    vllm = (
        "# HELP vllm:num_requests_running Number of requests running.\n"
        'vllm:num_requests_running{model_name="m",engine="0"} 2.0\n'
        'vllm:num_requests_running{model_name="m",engine="1"} 1.0\n'
        'vllm:generation_tokens_total{model_name="m"} 1234.0\n'
    )
    sglang = 'sglang:num_running_reqs{model_name="m"} 3\nsglang:generation_tokens_total 7e3\n'
    served = json.dumps({"requests_running": 1, "tokens_generated": 99})
    assert parse_metrics(vllm) == Gauge(3.0, 1234.0, "vllm:num_requests_running")
    assert parse_metrics(sglang) == Gauge(3.0, 7000.0, "sglang:num_running_reqs")
    assert parse_metrics(served) == Gauge(1.0, 99.0, "requests_running")
    assert parse_metrics("process_cpu_seconds_total 1.5\n") is None
    assert parse_metrics("<html>not found</html>") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
