"""`deepconf doctor`: check a server the way DeepConf needs it, one finding per question.

DeepConf decides answers from what a server streams, so the doctor asks what can be
measured from outside and says "unknown" for what cannot (reference/real-servers.md):

    streaming        200, text/event-stream, chunks parse, a finish reason, [DONE]
    top logprobs     k per token at the fullest position (a cap is the same everywhere), or none
    logprob values   real numbers, not placeholders (0 / -9999 everywhere), none above 0
    entry format     k+1 entries (the sampled token added), fewer than k (equal strings)
    logprob mode     raw (before temperature) or processed: the same positions at two
                     temperatures, same seed: equal logprobs are raw, gaps scaled by 1/T
                     processed (vLLM's default is raw, SGLang's processed)
    usage            reported in the stream, and equal to the tokens counted (one less:
                     the end token, which has no logprob entry, is normal)
    reasoning        reasoning deltas carry logprobs, when the model writes any
    concurrency      streams started together all end with a finish reason
                     (llama-cpp-python's default cuts one short with a bare [DONE])
    abort on close   closing a stream brings the server's running-request gauge down
                     (vLLM, SGLang, serve-model /metrics); no gauge: unknown
    tokens/s         at concurrency 1 and 16, counted from logprob entries

A FAIL is a finding that would make DeepConf wrong or refuse every trace; `Report.wrong`
says whether there is one (the command's exit status). This module holds the findings and
the checks that judge one reply, pure functions of `StreamSample`s (deepconf/doctor_probe.py
takes them); deepconf/doctor_run.py runs the checkup and the checks that need requests of
their own (concurrency, abort, tokens/s).

    check_top_logprobs(sample, k=20)    # Finding("top logprobs", "20 per token ...", "ok")
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from deepconf.config import StrictModel
from deepconf.doctor_probe import Position, StreamSample

Verdict = Literal["ok", "warn", "FAIL", "unknown"]


@dataclass(frozen=True)
class Finding:
    """One answer: what was seen, how it bears on DeepConf, and what to change."""

    check: str
    result: str
    verdict: Verdict
    fix: str = ""


@dataclass
class Report:
    base_url: str
    model: str
    api: str
    top_logprobs: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def wrong(self) -> bool:
        """Whether a finding would make DeepConf wrong (or refuse every trace)."""
        return any(f.verdict == "FAIL" for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api": self.api,
            "top_logprobs": self.top_logprobs,
            "wrong": self.wrong,
            "findings": [asdict(f) for f in self.findings],
        }


class DoctorSettings(StrictModel):
    """What to check and how hard; the defaults keep a fast server's checkup to seconds."""

    base_url: str = Field(description="The server's OpenAI base URL, e.g. http://host:8000/v1.")
    model: str | None = Field(None, description="None: the first of GET /v1/models.")
    api: Literal["chat", "completions"] = "chat"
    api_key: str | None = None
    top_logprobs: int = Field(20, ge=1, le=100, description="k DeepConf will ask for.")
    timeout: float = Field(30.0, gt=0, description="Seconds per request, send to last byte.")
    short_tokens: int = Field(32, ge=1, description="max_tokens of the short requests.")
    long_tokens: int = Field(512, ge=8, description="max_tokens of the stream abort closes.")
    close_after: int = Field(4, ge=1, description="Tokens read before abort closes it.")
    abort_deadline: float = Field(
        10.0, gt=0, description="Seconds the running gauge has to fall (SGLang lags ~6 s)."
    )
    concurrent: int = Field(3, ge=2, description="Streams started together (interrupts).")
    throughput_streams: int = Field(16, ge=2, description="Streams for the concurrent tok/s.")
    temperatures: tuple[float, float] = Field(
        (1.0, 0.5), description="Two temperatures > 0 that tell raw from processed logprobs."
    )
    seed: int = 1234

    @field_validator("temperatures")
    @classmethod
    def _two_temperatures(cls, ts: tuple[float, float]) -> tuple[float, float]:
        if min(ts) <= 0 or ts[0] == ts[1]:
            raise ValueError("two different temperatures above 0, e.g. (1.0, 0.5)")
        return ts


# --- checks of one reply -----------------------------------------------------------------------


def check_stream(sample: StreamSample) -> Finding:
    """Streaming works: an event stream of JSON chunks that ends with a finish reason."""
    name = "streaming"
    if sample.status is None:
        return Finding(
            name, f"no answer: {sample.error}", "FAIL", "check --base-url and the server"
        )
    if sample.status != 200:
        said = f"HTTP {sample.status}: {sample.body_excerpt or '(no body)'}"
        return Finding(name, said, "FAIL", _status_fix(sample.status))
    ctype = sample.content_type.split(";")[0].strip() or "no content type"
    if not sample.is_event_stream:
        if "html" in ctype:
            result = f"answered 200 with {ctype} (an error page?), not an event stream"
            fix = "point --base-url at the OpenAI-compatible API (http://host:port/v1), not a web"
            return Finding(name, result, "FAIL", fix + " page, proxy or login page")
        result = f"answered 200 with {ctype}, not an event stream: `stream: true` was ignored"
        return Finding(name, result, "FAIL", "use a server that streams (vLLM, SGLang, llama.cpp)")
    if sample.unreadable:
        result = f"{sample.unreadable} of {sample.payloads} data events are not JSON objects"
        return Finding(name, result, "FAIL", "a proxy in between may rewrite the stream")
    if sample.error:
        return Finding(name, f"the stream broke: {sample.error}", "FAIL", _error_fix(sample.error))
    if sample.finish_reason is None:
        if sample.done:
            result = "the stream ended with [DONE] but no finish_reason (cut short)"
            fix = "llama-cpp-python cuts streams when requests overlap: --interrupt_requests false"
        else:
            result = "the body ended without a finish_reason or [DONE] (cut short)"
            fix = "check the server's log and any proxy's timeouts"
        return Finding(name, result, "FAIL", fix)
    result = f"text/event-stream, {sample.payloads} chunks, finish_reason {sample.finish_reason!r}"
    if not sample.done:
        return Finding(
            name, result + ", no [DONE]", "warn", "none needed: the finish reason counts"
        )
    return Finding(name, result + ", [DONE]", "ok")


def _status_fix(status: int) -> str:
    if status in (401, 403):
        return "check --api-key (or $OPENAI_API_KEY)"
    if status == 404:
        return "check --base-url (usually ending in /v1), --api and --model"
    if status == 429:
        return "the server is rate limiting: wait, or raise its limit"
    if status >= 500:
        return "the server failed: read its log"
    return "the server refused a streamed request with logprobs: read its reason above"


def _error_fix(error: str) -> str:
    if error.startswith("no end within"):
        return "the stream stalled: check the server's load and log"
    return "check the server's log"


def check_top_logprobs(sample: StreamSample, k: int) -> Finding:
    """k top logprobs per token at the fullest position, and no text without them. A server's
    cap is the same at every position, while collapsed equal token strings (check_format) lower
    only some, so the fullest position tells the cap."""
    name = "top logprobs"
    if not sample.positions:
        if sample.text_chunks:
            result = f"none: {sample.text_chunks} chunks of text arrived without logprobs"
            fix = (
                "DeepConf needs top-k logprobs per token: use vLLM, SGLang or llama.cpp's"
                " server (OpenAI's reasoning models and some hosted APIs return none)"
            )
            return Finding(name, result, "FAIL", fix)
        result = "the model wrote no tokens to judge, even with ignore_eos"
        return Finding(name, result, "unknown", "check the model's chat template, or try --api")
    typical = max(sample.counts)
    if typical == 0:
        result = f"token entries arrive, but with no top logprobs ({k} asked)"
        return Finding(name, result, "FAIL", f"vLLM: start the server with --max-logprobs {k}")
    if typical < k:
        result = f"{typical} of {k} per token at the fullest position"
        fix = (
            f"vLLM: start the server with --max-logprobs {k} or more (its default is 20);"
            f" or run deepconf with --top-logprobs {typical}"
        )
        return Finding(name, result, "FAIL", fix)
    bare = sample.bare_text_chunks - sample.bare_reasoning_chunks
    if bare:
        result = f"{bare} of {sample.text_chunks} text chunks arrived without logprobs"
        fix = "their tokens would be missing from confidence: upgrade the server"
        return Finding(name, result, "FAIL", fix)
    return Finding(name, f"{k} per token at the fullest position ({k} asked)", "ok")


def check_values(sample: StreamSample) -> Finding:
    """Real log-probabilities: not placeholders, not NaN, not above 0."""
    name = "logprob values"
    values = [v for p in sample.positions for _, v in p.top]
    if not values:
        return Finding(name, "no logprobs to judge", "unknown")
    nans = sum(math.isnan(v) for v in values)
    if nans:
        result = f"{nans} NaN values"
        fix = "a server bug (vLLM does not clamp NaN): DeepConf fails such traces; upgrade it"
        return Finding(name, result, "FAIL", fix)
    if all(v == 0.0 or v <= -9999.0 for v in values):
        result = "placeholders: every value is 0 or -9999"
        fix = "this server does not compute logprobs (some hosted APIs): use one that does"
        return Finding(name, result, "FAIL", fix)
    positive = [v for v in values if v > 0.0]
    floor = sum(v <= -9999.0 for v in values)
    span = f"from {min(v for v in values if v > -9999.0):.3g} to {max(values):.3g}"
    if len(positive) * 2 > len(values):
        result = f"{len(positive)} of {len(values)} values above 0: not log-probabilities"
        return Finding(name, result, "FAIL", "check the server's logprob settings")
    if positive and max(positive) > 1e-3:
        result = f"{len(positive)} values above 0 (up to {max(positive):.3g}); DeepConf clamps them"
        return Finding(name, result, "warn", "check the server's logprob settings")
    result = f"real values, {span}"
    if floor:
        result += f"; {floor} at -9999 (cut by top-p/top-k), clamped to DeepConf's floor"
    return Finding(name, result, "ok")


def check_format(sample: StreamSample, k: int) -> Finding:
    """k+1 entries (the sampled token added) or fewer than k (equal token strings)."""
    name = "entry format"
    counts = sample.counts
    if not counts or max(counts) < k:
        return Finding(name, "not judged: fewer than k logprobs per token", "unknown")
    extra = [p for p in sample.positions if len(p.top) > k]
    short = sum(c < k for c in counts)
    notes = []
    if extra:
        last = sum(p.top[-1][0] == p.token for p in extra)
        where = "last (llama.cpp)" if last * 2 >= len(extra) else "first (vLLM completions)"
        notes.append(f"k+1 entries at {_share(len(extra), counts)}: the sampled token {where}")
    if short:
        result = f"fewer than k at {_share(short, counts)} (equal token strings collapse)"
        fix = (
            "confidence there averages fewer values, a small bias: on vLLM send"
            " return_tokens_as_token_ids; llama.cpp collapses them in chat and completions alike"
        )
        return Finding(name, "; ".join([*notes, result]), "warn", fix)
    if notes:
        return Finding(name, notes[0], "ok", "none needed: DeepConf keeps the k largest")
    return Finding(name, f"exactly {k} entries at every position", "ok")


def _share(n: int, counts: list[int]) -> str:
    return f"{n} of {len(counts)} positions"


def check_mode(
    first: StreamSample, second: StreamSample, t_first: float, t_second: float
) -> Finding:
    """Raw or processed logprobs, from the same positions at two temperatures.

    After temperature T a logprob is z/T - log Z, so the gap between two tokens' logprobs
    scales by 1/T: the gaps at T=t_second are t_first/t_second times those at t_first.
    Raw logprobs do not depend on T at all. Only positions whose preceding sampled tokens
    are the same in both replies are compared (the same context)."""
    name = "logprob mode"
    ratios = gap_ratios(first.positions, second.positions)
    if not ratios:
        return Finding(name, "no position to compare between the two temperatures", "unknown")
    ratio, scaled = statistics.median(ratios), t_first / t_second
    seen = f"at T={t_first:g} and T={t_second:g}"
    if abs(ratio - 1.0) <= 0.1:
        return Finding(name, f"raw (before temperature): equal logprobs {seen}", "ok")
    if abs(ratio - scaled) <= 0.15 * scaled:
        result = f"processed (after temperature): logprob gaps scale by 1/T {seen}"
        fix = (
            "DeepConf works with either, but never reuse a threshold across modes or"
            " temperatures; raw: vLLM --logprobs-mode raw_logprobs, SGLang"
            " SGLANG_RETURN_ORIGINAL_LOGPROB=1"
        )
        return Finding(name, result, "warn", fix)
    result = f"logprobs {seen} differ in a way temperature does not explain (x{ratio:.2f})"
    return Finding(name, result, "unknown")


def gap_ratios(a: list[Position], b: list[Position]) -> list[float]:
    """Per token pair at shared positions: (gap in b) / (gap in a), gaps taken from the
    position's most likely token. Empty when no position shares its context."""
    ratios = []
    for i, (pa, pb) in enumerate(zip(a, b, strict=False)):
        if i and (a[i - 1].token is None or a[i - 1].token != b[i - 1].token):
            break  # the contexts differ from here on
        va = {t: v for t, v in reversed(pa.top) if v > -9999.0}
        vb = {t: v for t, v in reversed(pb.top) if v > -9999.0}
        common = va.keys() & vb.keys()
        if len(common) < 2:
            continue
        ref = max(common, key=va.__getitem__)
        for t in common:
            gap = va[t] - va[ref]
            if abs(gap) > 0.05:
                ratios.append((vb[t] - vb[ref]) / gap)
    return ratios


def check_usage(sample: StreamSample) -> Finding:
    """Usage reported in the stream, and equal to the tokens counted (or one more)."""
    name = "usage"
    reported = (sample.usage or {}).get("completion_tokens")
    if not isinstance(reported, int):
        result = "not reported in the stream (stream_options.include_usage ignored)"
        fix = "none needed: DeepConf counts logprob entries, but cannot cross-check them"
        return Finding(name, result, "warn", fix)
    counted = sample.tokens
    if not counted:
        return Finding(name, f"{reported} tokens reported, no logprob entries", "unknown")
    if reported == counted:
        return Finding(name, f"{reported} tokens, as counted from logprob entries", "ok")
    if reported == counted + 1:
        return Finding(name, f"{reported} tokens, {counted} counted: the end token", "ok")
    result = f"{reported} tokens reported, {counted} counted from logprob entries"
    fix = "tokens without logprobs (or a wrong count): DeepConf fails such traces"
    return Finding(name, result, "FAIL", fix)


def check_reasoning(sample: StreamSample, api: str) -> Finding:
    """Reasoning deltas (delta.reasoning_content / delta.reasoning) carry logprobs."""
    name = "reasoning logprobs"
    if api != "chat":
        return Finding(name, "completions: no separate reasoning text (nothing to check)", "ok")
    if not sample.reasoning_chunks:
        return Finding(name, "the model wrote no reasoning text here (nothing to check)", "ok")
    bare, total = sample.bare_reasoning_chunks, sample.reasoning_chunks
    if not bare:
        return Finding(name, f"all {total} reasoning chunks carry logprobs", "ok")
    result = f"{bare} of {total} reasoning chunks arrive without logprobs"
    fix = (
        "the reasoning parser drops them (vLLM #37737, SGLang #28456): upgrade the server or"
        " start it without a reasoning parser"
    )
    return Finding(name, result, "FAIL", fix)


__all__ = [
    "DoctorSettings",
    "Finding",
    "Report",
    "Verdict",
    "check_format",
    "check_mode",
    "check_reasoning",
    "check_stream",
    "check_top_logprobs",
    "check_usage",
    "check_values",
    "gap_ratios",
]
