"""What the controller records of each trace and says when it gives up (deepconf/controller.py).

Pinned by mutation testing (.ci/mutation): the trace file's metadata, record fields the other
controller tests never looked at (reasoning, usage, threshold, finish reason), why a stream
that ended quietly still fails, and the words of `give_up` for every kind of failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from support.fake_backend import FakeBackend, Script, make_config

from deepconf.backend import TokenBatch, TraceRequest
from deepconf.confidence import trace_metrics
from deepconf.config import ConfidenceConfig, DeepConfConfig
from deepconf.controller import DeepConf, give_up
from deepconf.errors import (
    BackendError,
    CapabilityError,
    ConfigError,
    ConnectError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    StreamError,
)
from deepconf.trace import FORMULA, TraceStatus, read_traces


@dataclass
class BatchBackend:
    """Plays the same TokenBatch list for every trace (the FakeBackend has no reasoning or
    usage channel)."""

    batches: list[TokenBatch]
    model: str = "batch-model"
    requests: list[TraceRequest] = field(default_factory=list)

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
        self.requests.append(request)
        for batch in self.batches:
            yield batch


def rows(n: int, conf: float = 15.0, k: int = 4) -> np.ndarray:
    return np.full((n, k), -conf)


async def test_the_trace_file_repeats_the_solves_settings_on_every_line(tmp_path) -> None:
    """Each line carries exactly the solve's metadata: what replay needs to re-threshold it
    (k, window, tail, bottom fraction, formula, sampling) and where it came from."""
    path = tmp_path / "t.jsonl"
    cfg = make_config(warmup=2, budget=3, variant="high", sampling={"seed": 5, "max_tokens": 99})
    fake = FakeBackend(default=Script(conf=15.0, answer="1"))
    result = await DeepConf(fake, cfg, trace_path=path).solve("q", problem_id="p-9")
    assert result.problem_id == "p-9"
    metas = [s.meta for s in read_traces(path)]
    assert len(metas) == len(result.traces) >= 2
    assert metas[0] == {
        "problem_id": "p-9",
        "model": "fake-model",
        "mode": "online",
        "variant": "high",
        "sampling": cfg.sampling.model_dump(mode="json"),
        "k": cfg.confidence.top_logprobs,
        "window": 4,
        "tail": 4,
        "bottom_fraction": cfg.confidence.bottom_fraction,
        "formula": FORMULA,
    }
    assert all(m == metas[0] for m in metas)


async def test_records_keep_reasoning_usage_and_the_finish_reason() -> None:
    """A record holds the reasoning apart from the text, the completion tokens the server
    reported (here one more than scored: the end token) and the finish reason."""
    backend = BatchBackend(
        [
            TokenBatch(rows(2), reasoning="Three plus four. "),
            TokenBatch(rows(2), text="It is ", reasoning="Seven."),
            TokenBatch(rows(1), text="\\boxed{7}", finish_reason="stop"),
            TokenBatch(np.empty((0, 4)), usage={"prompt_tokens": 3, "completion_tokens": 6}),
        ]
    )
    result = await DeepConf(backend, make_config(warmup=1, budget=1, window=2)).solve("q")
    (t,) = result.traces
    assert t.status is TraceStatus.COMPLETED
    assert (t.text, t.reasoning) == ("It is \\boxed{7}", "Three plus four. Seven.")
    assert (t.answer, t.tokens, t.server_tokens, t.finish_reason) == ("7", 5, 6, "stop")
    assert (t.error, t.seed, t.pruned_at) == (None, None, None)
    assert t.elapsed >= 0.0


async def test_online_records_carry_the_threshold_they_ran_under() -> None:
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 3)))  # no consensus
    result = await DeepConf(fake, make_config(warmup=3, budget=5, variant="high")).solve("q")
    phases = [t.phase for t in result.traces]
    assert phases == ["warmup"] * 3 + ["online"] * 2
    assert result.threshold is not None
    for t in result.traces:
        assert t.threshold == (None if t.phase == "warmup" else result.threshold)


async def test_an_answer_only_in_the_reasoning_still_counts_but_the_text_wins() -> None:
    only_reasoning = BatchBackend(
        [TokenBatch(rows(3), reasoning="So \\boxed{5}.", finish_reason="stop")]
    )
    result = await DeepConf(only_reasoning, make_config(warmup=1, budget=1)).solve("q")
    assert result.traces[0].answer == "5"
    both = BatchBackend(
        [TokenBatch(rows(3), text="\\boxed{6}", reasoning="\\boxed{5}", finish_reason="stop")]
    )
    result = await DeepConf(both, make_config(warmup=1, budget=1)).solve("q")
    assert result.traces[0].answer == "6"


@pytest.mark.parametrize(
    ("batches", "error"),
    [
        (
            [TokenBatch(rows(3), text="\\boxed{1}")],
            "the stream ended after 3 tokens without a finish reason: the backend cut the"
            " trace short, so it is not counted",
        ),
        (
            [TokenBatch(np.empty((0, 4)), text="\\boxed{1}", finish_reason="stop")],
            "the stream ended (finish reason 'stop') before any token with logprobs arrived:"
            " there is nothing to score, so the trace is not counted",
        ),
    ],
    ids=["no-finish-reason", "no-token"],
)
async def test_a_stream_that_ends_quietly_without_what_counts_fails(batches, error) -> None:
    """Whatever the backend: no finish reason, or no scored token, is a failed trace with
    no answer, and a solve made only of such traces gives up saying why."""
    backend = BatchBackend(batches)
    with pytest.raises(StreamError) as info:
        await DeepConf(backend, make_config(warmup=1, budget=2)).solve("q")
    assert str(info.value) == (
        f"2 traces failed in a row, so deepconf gave up; the first error was: {error}."
        " Its streams are broken: run `deepconf doctor --base-url URL` to see what it sends."
    )


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (CapabilityError("short k."), "Fix the server's logprobs as the error says, then retry."),
        (
            RateLimitedError("429", 4.0),
            "The server kept rate limiting: lower --concurrency or set --rps.",
        ),
        (
            ConnectError("refused"),
            "The server is unreachable: start it or fix --base-url, then retry.",
        ),
        (ServerError("503"), "The server keeps failing (HTTP 5xx): its log says why."),
        (
            RequestRejectedError("400", 400),
            "The server refuses the request itself: see its reason above.",
        ),
        (
            StreamError("cut"),
            "Its streams are broken: run `deepconf doctor --base-url URL` to see what it sends.",
        ),
        (BackendError("odd"), "See the error above, then retry."),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, BaseException) else "",
)
def test_give_up_names_the_first_error_and_advises_on_its_kind(error, advice) -> None:
    """One failure: 'a trace failed'; the first error's message without its final period,
    then the advice for its kind; the error keeps its type (and a 429 its Retry-After)."""
    err = give_up([error])
    assert type(err) is type(error)
    first = str(error).rstrip(".")
    assert (
        str(err) == f"a trace failed, so deepconf gave up; the first error was: {first}. {advice}"
    )
    if isinstance(error, RateLimitedError):
        assert err.retry_after == 4.0


def test_give_up_advises_on_the_most_common_kind_but_keeps_the_first_errors_type() -> None:
    """A streak of one stream error then two connect errors: the advice is the connect
    error's (the commonest), the message and the type are the first error's."""
    err = give_up([StreamError("cut"), ConnectError("refused"), ConnectError("refused")])
    assert type(err) is StreamError
    assert str(err) == (
        "3 traces failed in a row, so deepconf gave up; the first error was: cut. The server"
        " is unreachable: start it or fix --base-url, then retry."
    )
    mixed = give_up([ServerError("5xx"), BackendError("x"), BackendError("y")])
    assert str(mixed).endswith("the first error was: 5xx. See the error above, then retry.")


async def test_a_prune_at_the_first_token_of_a_batch_is_placed_there() -> None:
    """Batches of 3 tokens at window 4 and s ~ 15: the first window below s ends at token 7,
    the first token of the third batch (tokens 7-9), and that is where the prune is
    recorded, not at a later token of the batch."""
    fake = FakeBackend(
        {
            0: Script(conf=15.0, n=8, answer="1"),
            1: Script(conf=15.0, n=8, answer="2"),
            2: Script(conf=[20.0] * 5 + [5.0] * 6, chunks=[3], answer="9"),
        }
    )
    result = await DeepConf(fake, make_config(warmup=2, budget=3)).solve("q")
    assert result.threshold == pytest.approx(15.0, rel=2e-6)
    pruned = result.traces[2]
    assert (pruned.status, pruned.pruned_at, pruned.tokens) == (TraceStatus.PRUNED, 7, 9)


async def test_a_backend_without_a_model_name_records_none(tmp_path) -> None:
    """`model` is optional on a backend: the trace file then records None."""

    class Nameless:
        async def open(self) -> None:
            pass

        async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
            yield TokenBatch(rows(3), text="\\boxed{1}", finish_reason="stop")

    engine = DeepConf(Nameless(), make_config(warmup=1, budget=1), trace_path=tmp_path / "t")
    assert (await engine.solve("q")).answer == "1"
    assert [s.meta["model"] for s in read_traces(tmp_path / "t")] == [None]


async def test_the_backend_gets_the_prompt_and_the_result_the_solves_settings() -> None:
    backend = BatchBackend([TokenBatch(rows(3), text="\\boxed{1}", finish_reason="stop")])
    t0 = time.monotonic()
    result = await DeepConf(backend, make_config(warmup=1, budget=2, variant="high")).solve(
        "What is 3+4?"
    )
    elapsed = time.monotonic() - t0
    assert [r.prompt for r in backend.requests] == ["What is 3+4?"]
    assert (result.mode, result.variant, result.budget) == ("online", "high", 2)
    assert 0.0 < result.wall_time <= elapsed  # measured inside the solve, from its start


class Boom(BaseException):
    """Not an Exception: a trace task does not catch it, so it leaves the task group."""


async def test_an_error_that_escapes_a_trace_is_raised_as_itself_not_as_a_group() -> None:
    class Exploding:
        async def open(self) -> None:
            pass

        async def stream(self, request: TraceRequest) -> AsyncIterator[TokenBatch]:
            raise Boom("the backend broke")
            yield  # an async generator

    with pytest.raises(Boom, match="the backend broke"):
        await DeepConf(Exploding(), make_config(warmup=1, budget=1)).solve("q")


async def test_the_fallback_sentences_and_the_estimate_without_finished_traces() -> None:
    """When the confidence vote is empty the fallback says whether plain majority answered
    (over how many finished traces) or nobody did; with no finished trace at all there is
    no estimate of what majority voting would spend."""
    scripts = {
        0: Script(conf=10.0, answer="5"),
        1: Script(conf=11.0, answer="5"),
        2: Script(conf=12.0, answer="6"),
        3: Script(conf=20.0, answer=None),
    }
    result = await DeepConf(FakeBackend(scripts), make_config(warmup=4, budget=4)).solve("q")
    assert result.fallback.endswith(
        ", so the answer is plain majority over the 4 traces that ran to completion."
    )
    silent = FakeBackend(default=Script(conf=15.0, answer=None))
    result = await DeepConf(silent, make_config(warmup=2, budget=2)).solve("q")
    assert result.answer is None
    assert result.fallback.endswith(", and no trace that ran to completion gave an answer.")
    stopped = FakeBackend(default=Script(conf=15.0, n=40, answer="1"))
    result = await DeepConf(stopped, make_config(warmup=2, budget=2, token_budget=10)).solve("q")
    assert [t.status for t in result.traces] == [TraceStatus.CANCELLED]  # at token 10
    assert result.tokens_majority_estimate is None


async def test_each_request_carries_the_solves_sampling_and_k() -> None:
    backend = BatchBackend([TokenBatch(rows(3), text="\\boxed{1}", finish_reason="stop")])
    cfg = make_config(warmup=1, budget=1, sampling={"temperature": 0.9, "seed": 11})
    result = await DeepConf(backend, cfg).solve("q")
    (req,) = backend.requests
    assert (req.index, req.sampling, req.top_logprobs, req.seed) == (
        0,
        cfg.sampling,
        cfg.confidence.top_logprobs,
        11,
    )
    assert result.traces[0].seed == 11  # recorded too
    assert 0.0 < result.traces[0].elapsed <= result.wall_time


async def test_answers_follow_the_answer_settings_in_text_and_reasoning() -> None:
    """The solve's own answer settings (here an extra pattern) decide what counts as an
    answer, in the text and, when the text has none, in the reasoning."""
    cfg = make_config(warmup=1, budget=1, answer={"patterns": [r"RESULT=(\d+)"]})
    in_text = BatchBackend([TokenBatch(rows(3), text="RESULT=42", finish_reason="stop")])
    assert (await DeepConf(in_text, cfg).solve("q")).traces[0].answer == "42"
    in_reasoning = BatchBackend(
        [TokenBatch(rows(3), text="done", reasoning="RESULT=43", finish_reason="stop")]
    )
    assert (await DeepConf(in_reasoning, cfg).solve("q")).traces[0].answer == "43"


async def test_metrics_use_the_configured_bottom_fraction_and_elapsed_is_inside_the_solve():
    confs = [15.0, 10.0, 14.0, 12.0, 18.0, 11.0]
    fake = FakeBackend(default=Script(conf=confs, answer="1"))
    cfg = DeepConfConfig(
        warmup=1,
        budget=1,
        concurrency=1,
        confidence=ConfidenceConfig(window=2, tail=2, bottom_fraction=0.5),
    )
    result = await DeepConf(fake, cfg).solve("q")
    (t,) = result.traces
    assert t.metrics == trace_metrics(np.array(confs), 2, 2, 0.5)
    assert 0.0 <= t.elapsed <= result.wall_time


async def test_a_trace_that_failed_before_its_first_token_has_no_confidences() -> None:
    fake = FakeBackend(
        {0: Script(fail_at=0, error=StreamError("refused"))}, default=Script(answer="1")
    )
    result = await DeepConf(fake, make_config(warmup=1, budget=2)).solve("q")
    failed = result.traces[0]
    assert failed.status is TraceStatus.FAILED and failed.error == "refused"
    assert failed.token_confs.shape == (0,) and failed.metrics is None and failed.tokens == 0


async def test_progress_snapshots_carry_the_budgets_and_the_vote_share() -> None:
    snaps = []
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 3)))
    cfg = make_config(warmup=2, budget=3, token_budget=500)
    await DeepConf(fake, cfg, on_progress=snaps.append).solve("q")
    assert snaps and all((s.budget, s.token_budget) == (3, 500) for s in snaps)
    assert all(isinstance(s.beta, float) and 0.0 <= s.beta <= 1.0 for s in snaps)


async def test_without_a_config_the_defaults_apply() -> None:
    fake = FakeBackend(default=Script(conf=15.0, answer="3"))
    engine = DeepConf(fake)
    assert engine.config == DeepConfConfig()
    assert engine.trace_path is None and engine.on_progress is None


async def test_each_request_asks_for_the_configured_k() -> None:
    backend = BatchBackend([TokenBatch(rows(3, k=5), text="\\boxed{1}", finish_reason="stop")])
    cfg = DeepConfConfig(
        warmup=1, budget=1, concurrency=1, confidence=ConfidenceConfig(top_logprobs=5, window=2)
    )
    await DeepConf(backend, cfg).solve("q")
    assert [r.top_logprobs for r in backend.requests] == [5]


def test_the_backends_model_card_fills_what_the_config_leaves_unset() -> None:
    """The bundled engine carries its model card (`defaults`): DeepConf takes the card's
    window where the user set none, and keeps a window the user set, even one equal to the
    default."""
    fake = FakeBackend(default=Script())
    fake.defaults = {"window": 8}  # type: ignore[attr-defined]
    assert DeepConf(fake).config.confidence.window == 8
    assert DeepConf(FakeBackend(default=Script())).config.confidence.window == 2048
    mine = DeepConfConfig(confidence=ConfidenceConfig(window=2048))
    assert DeepConf(fake, mine).config.confidence.window == 2048


async def test_an_unwritable_trace_file_stops_the_solve_before_any_trace(tmp_path) -> None:
    """The trace file opens before the first trace is sent: a path that cannot be written
    (here, under a regular file) is a ConfigError that names it, with no GPU time spent."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    fake = FakeBackend(default=Script())
    engine = DeepConf(fake, make_config(), trace_path=blocker / "traces.jsonl")
    with pytest.raises(ConfigError, match=r"cannot write the trace file .*not-a-folder"):
        await engine.solve("q")
    assert fake.requests == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
async def test_a_full_disk_mid_solve_stops_it_with_the_trace_files_error() -> None:
    """The trace file stops taking lines (a full disk: /dev/full) when the first trace
    ends: the solve raises that ConfigError, plainly, not an OSError or an exception group
    from the traces in flight beside it."""
    fake = FakeBackend(default=Script())
    engine = DeepConf(fake, make_config(concurrency=2), trace_path="/dev/full")
    with pytest.raises(ConfigError, match=r"^cannot write the trace file /dev/full: No space"):
        await engine.solve("q")


async def test_a_batch_that_brings_its_token_confidences_is_scored_by_them() -> None:
    """The C decoder computes each read's confidences as it decodes (TokenBatch.token_conf):
    the controller records those, and computes them from the logprobs only where a batch
    brings none."""
    backend = BatchBackend(
        [
            TokenBatch(rows(2, conf=15.0), token_conf=np.array([7.0, 8.0])),
            TokenBatch(rows(1, conf=15.0), text="\\boxed{7}", finish_reason="stop"),
        ]
    )
    result = await DeepConf(backend, make_config(warmup=1, budget=1, window=2)).solve("q")
    (t,) = result.traces
    assert t.token_confs.tolist() == [7.0, 8.0, 15.0]


async def test_a_result_repr_is_one_line_without_the_traces() -> None:
    """Python 3.11's asyncio.run() formats the main task, result included, whenever it ends:
    the default repr of every trace's text and confidences cost ~15% of a solve's CPU."""
    fake = FakeBackend(default=Script(conf=15.0, n=1500, answer="42", text="word " * 2000))
    result = await DeepConf(fake, make_config(mode="offline", budget=4)).solve("q")
    assert repr(result) == (
        "SolveResult(answer='42', beta=1.000, traces=4, tokens=6000,"
        " stop_reason='budget', mode='offline')"
    )
