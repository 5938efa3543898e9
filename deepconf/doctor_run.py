"""Running `deepconf doctor`'s checkup against a live server.

`diagnose` takes the replies the pure checks of deepconf/doctor.py judge, then runs the
checks that need requests of their own: streams started together (is one cut short?), a
long stream closed after a few tokens while /metrics is watched (does generation stop?),
and tokens/s at concurrency 1 and N. Every request is short and bounded by the settings'
timeout, so a checkup of a fast server takes seconds and a dead one cannot hang it.

    report = asyncio.run(diagnose(DoctorSettings(base_url="http://localhost:8000/v1")))
    report.wrong                                    # a FAIL: DeepConf would be wrong there
"""

from __future__ import annotations

import asyncio
import time

from deepconf.doctor import (
    DoctorSettings,
    Finding,
    Report,
    check_format,
    check_mode,
    check_reasoning,
    check_stream,
    check_top_logprobs,
    check_usage,
    check_values,
)
from deepconf.doctor_probe import Gauge, ServerProbe, StreamSample

# Below this many tokens a reply says too little about k; the doctor asks once more with
# ignore_eos (vLLM, SGLang, llama.cpp's server and serve-model take it).
MIN_TOKENS = 8
# Tokens a server may still generate after a close and count as stopped (vLLM and llama.cpp
# measured 1-3: the abort is seen at the next step).
ABORT_SLACK_TOKENS = 16
GAUGE_POLL = 0.02  # seconds between /metrics reads while waiting for the gauge to fall

NO_GAUGE_FIX = (
    "cannot tell whether closing a stream stops generation: vLLM exposes"
    " vllm:num_requests_running, SGLang sglang:num_running_reqs (with --enable-metrics);"
    " elsewhere watch the server's log for aborted requests"
)
KEEPS_GENERATING_FIX = (
    "the server keeps generating for closed streams, so prunes save no compute (llama.cpp"
    " #11720, vLLM #54947, SGLang zombie requests): upgrade it; a proxy must pass the"
    " disconnect on"
)


async def diagnose(settings: DoctorSettings) -> Report:
    """Run every check; raises ConnectError when the server cannot be reached at all."""
    from deepconf.backends.openai_http import HttpBackendConfig

    # The project's one normalisation of base URLs (a bare host gets /v1).
    base_url = HttpBackendConfig(base_urls=[settings.base_url]).base_urls[0]
    k, (t_first, t_second) = settings.top_logprobs, settings.temperatures
    probe = ServerProbe(
        base_url,
        model=settings.model,
        api=settings.api,
        k=k,
        api_key=settings.api_key,
        timeout=settings.timeout,
    )
    async with probe:
        report = Report(base_url, await probe.discover_model(), settings.api, k)
        first = await _first_sample(probe, settings)
        report.findings.append(check_stream(first))
        if report.findings[0].verdict == "FAIL":
            report.findings += _not_checked(settings, "no stream to judge (see streaming)")
            return report
        body = probe.body(
            max_tokens=settings.short_tokens, temperature=t_second, seed=settings.seed
        )
        second = await probe.sample(body)
        report.findings += [
            check_top_logprobs(first, k),
            check_values(first),
            check_format(first, k),
            check_mode(first, second, t_first, t_second),
            check_usage(first),
            check_reasoning(first, settings.api),
            await check_concurrency(probe, settings),
            await check_abort(probe, settings),
            *await check_throughput(probe, settings),
        ]
    return report


async def _first_sample(probe: ServerProbe, settings: DoctorSettings) -> StreamSample:
    """The reply the stream checks judge.

    A model may end after a token or two, and the doctor must not blame the server for
    that (issue 9: a probe refused a server because its model ended at once): a short
    reply is asked for again with ignore_eos, which every later request then carries, but
    only when the server took it."""
    temperature = settings.temperatures[0]
    body = probe.body(max_tokens=settings.short_tokens, temperature=temperature, seed=settings.seed)
    sample = await probe.sample(body)
    short = sample.received < min(MIN_TOKENS, settings.short_tokens)
    if not (sample.is_event_stream and sample.finish_reason == "stop" and short):
        return sample
    again = await probe.sample(body | {"ignore_eos": True})
    if again.is_event_stream and again.received > sample.received:
        probe.extra["ignore_eos"] = True
        return again
    return sample


def _not_checked(settings: DoctorSettings, why: str) -> list[Finding]:
    names = [
        "top logprobs",
        "logprob values",
        "entry format",
        "logprob mode",
        "usage",
        "reasoning logprobs",
        "concurrent streams",
        "abort on close",
        "tokens/s, 1 stream",
        f"tokens/s, {settings.throughput_streams} streams",
    ]
    return [Finding(name, why, "unknown") for name in names]


# --- streams started together ------------------------------------------------------------------


async def check_concurrency(probe: ServerProbe, settings: DoctorSettings) -> Finding:
    """Streams started together all end with a finish reason.

    llama-cpp-python's server (interrupt_requests=True, its default) ends the running
    stream with a bare [DONE] whenever another request waits: DeepConf runs its traces in
    parallel, so there nearly every trace would end cut short."""
    name, n = "concurrent streams", settings.concurrent
    samples = await _together(probe, settings, n, seed=settings.seed + 1)
    cut = [s for s in samples if s.is_event_stream and s.finish_reason is None]
    bare_done = [s for s in cut if s.done and not s.error]
    if bare_done:
        result = f"{len(bare_done)} of {n} streams started together ended with [DONE] and no"
        fix = (
            "llama-cpp-python cuts the running stream when another request arrives: start"
            " it with --interrupt_requests false"
        )
        return Finding(name, result + " finish_reason (cut short)", "FAIL", fix)
    if cut:
        why = "; ".join(sorted({s.error or "the body just ended" for s in cut}))
        result = f"{len(cut)} of {n} streams started together ended without a finish reason"
        return Finding(name, f"{result}: {why}", "FAIL", "check the server's log and limits")
    refused = [s for s in samples if not s.is_event_stream]
    if refused:
        said = ", ".join(sorted({str(s.status or s.error) for s in refused}))
        result = f"{len(refused)} of {n} requests started together were refused ({said})"
        return Finding(name, result, "warn", "the server limits concurrency: lower --concurrency")
    return Finding(name, f"{n} streams started together, each ended with a finish reason", "ok")


async def _together(
    probe: ServerProbe, settings: DoctorSettings, n: int, seed: int
) -> list[StreamSample]:
    bodies = [
        probe.body(
            max_tokens=settings.short_tokens, temperature=settings.temperatures[0], seed=seed + i
        )
        for i in range(n)
    ]
    return list(await asyncio.gather(*(probe.sample(b) for b in bodies)))


# --- abort on close ----------------------------------------------------------------------------


async def check_abort(probe: ServerProbe, settings: DoctorSettings) -> Finding:
    """Closing a stream stops its generation, where /metrics shows a running-request gauge.

    A long stream is closed after `close_after` tokens; the gauge must fall below what it
    read while the stream was open, within `abort_deadline`. A generated-tokens counter
    (vLLM, SGLang, serve-model) tells a stop from a request that simply ran to its end;
    without one, the gauge must fall well before the stream's own end at its pace."""
    name = "abort on close"
    before = await probe.gauge()
    if before is None:
        result = f"{probe.root}/metrics shows no running-request gauge"
        return Finding(name, result, "unknown", NO_GAUGE_FIX)
    seen: dict[str, float | Gauge | None] = {}
    start = time.monotonic()

    async def read_gauge(sample: StreamSample) -> None:
        seen["gauge"] = await probe.gauge()
        seen["pace"] = sample.received / max(time.monotonic() - start, 1e-3)  # tokens/s

    body = probe.body(
        max_tokens=settings.long_tokens,
        temperature=settings.temperatures[0],
        seed=settings.seed + 99,
        ignore_eos=True,  # a model must not end the stream before the doctor closes it
    )
    sample = await probe.sample(body, close_after=settings.close_after, while_open=read_gauge)
    if sample.status == 400:  # a server that refuses ignore_eos: the model may end it early
        start = time.monotonic()
        del body["ignore_eos"]
        sample = await probe.sample(body, close_after=settings.close_after, while_open=read_gauge)
    closed = time.monotonic()
    during = seen.get("gauge")
    if not sample.closed_early:
        if sample.error or not sample.is_event_stream:
            why = sample.error or f"HTTP {sample.status}"
        else:
            why = f"it ended ({sample.finish_reason}) after {sample.text_chunks} chunks"
        return Finding(name, f"not measured: the long stream was not closed: {why}", "unknown")
    if not isinstance(during, Gauge) or during.running <= before.running:
        result = (
            f"not measured: {before.name} did not count the stream while it was open (the"
            " server may have generated all of it already)"
        )
        return Finding(name, result, "unknown", NO_GAUGE_FIX)
    after = await _gauge_below(probe, during.running, closed + settings.abort_deadline)
    took = time.monotonic() - closed
    if after is None:
        result = f"{before.name} still counted it {settings.abort_deadline:g} s after the close"
        return Finding(name, result, "warn", KEEPS_GENERATING_FIX)
    remaining = settings.long_tokens - sample.received
    if during.generated is not None and after.generated is not None:
        extra = after.generated - during.generated
        # A real abort lands within a scheduler step or two: a few tokens. Many more means
        # the request ran on (to its end, or to where the model would have stopped anyway).
        if extra > max(ABORT_SLACK_TOKENS, 0.1 * remaining):
            result = f"the request ran on: {_tokens(extra)} generated after the close"
            return Finding(name, result, "warn", KEEPS_GENERATING_FIX)
        result = f"stopped {took:.2f} s after the close ({_tokens(extra)} generated past it)"
        return Finding(name, result, "ok")
    pace = seen.get("pace")
    natural = remaining / pace if isinstance(pace, float) and pace > 0 else float("inf")
    if took < natural / 2:
        return Finding(name, f"stopped {took:.2f} s after the close ({before.name})", "ok")
    result = f"{before.name} fell {took:.2f} s after the close, about when the stream would"
    return Finding(name, result + " have ended anyway", "unknown", NO_GAUGE_FIX)


def _tokens(n: float) -> str:
    return f"{n:.0f} token" + ("" if n == 1 else "s")


async def _gauge_below(probe: ServerProbe, running: float, deadline: float) -> Gauge | None:
    """The first gauge reading below `running` before `deadline`, else None."""
    while True:
        gauge = await probe.gauge()
        if gauge is not None and gauge.running < running:
            return gauge
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(GAUGE_POLL)


# --- tokens/s ----------------------------------------------------------------------------------


async def check_throughput(probe: ServerProbe, settings: DoctorSettings) -> list[Finding]:
    """Tokens/s (counted from logprob entries) of one short stream and of N at once."""
    n = settings.throughput_streams
    one = await _rate(probe, settings, 1)
    many = await _rate(probe, settings, n)
    findings = [_rate_finding("tokens/s, 1 stream", *one)]
    rate_many = _rate_finding(f"tokens/s, {n} streams", *many)
    if one[0] > 0 and many[0] > 0 and rate_many.verdict == "ok":
        speedup = many[0] / one[0]
        result = f"{rate_many.result}, x{speedup:.1f} one stream's"
        if speedup < 1.2:
            fix = (
                "streams are not decoded together, so DeepConf's traces queue: llama.cpp's"
                " llama-server needs --parallel N; llama-cpp-python serves one at a time"
            )
            rate_many = Finding(rate_many.check, result, "warn", fix)
        else:
            rate_many = Finding(rate_many.check, result, "ok")
    return [*findings, rate_many]


async def _rate(
    probe: ServerProbe, settings: DoctorSettings, n: int
) -> tuple[float, int, float, int]:
    """(tokens/s, tokens, seconds, streams that failed) for n short streams at once."""
    start = time.monotonic()
    samples = await _together(probe, settings, n, seed=settings.seed + 1000 * n)
    seconds = time.monotonic() - start
    tokens = sum(s.tokens for s in samples)
    failed = sum(s.finish_reason is None for s in samples)
    return tokens / seconds, tokens, seconds, failed


def _rate_finding(name: str, rate: float, tokens: int, seconds: float, failed: int) -> Finding:
    if not tokens:
        return Finding(name, "no logprob entries to count tokens by", "unknown")
    result = f"{rate:,.0f} tokens/s ({tokens} tokens in {seconds:.2f} s"
    if failed:  # the rate then says little: the cause is judged by the streaming checks
        result += f"; {failed} streams failed or were cut)"
        return Finding(name, result, "warn", "see the streaming and concurrent streams rows")
    return Finding(name, result + ")", "ok")


__all__ = ["MIN_TOKENS", "check_abort", "check_concurrency", "check_throughput", "diagnose"]
