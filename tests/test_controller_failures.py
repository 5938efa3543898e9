"""The controller when things go wrong: failing traces, a dead server, nothing surviving the
filter, a cancelled solve, a broken progress callback."""

from __future__ import annotations

import asyncio

import pytest
from support.fake_backend import FakeBackend, Script, make_config

from deepconf.controller import DeepConf
from deepconf.errors import BackendError, StreamError
from deepconf.trace import TraceStatus


async def test_one_failing_trace_is_recorded_and_replaced() -> None:
    """Trace 3 breaks at token 5: it is recorded as failed with the error text and its
    tokens, and a replacement runs, so `budget` traces still end without failing."""
    fake = FakeBackend(
        {3: Script(conf=15.0, fail_at=5, error=StreamError("connection reset by peer"))},
        default=lambda i: Script(conf=15.0, answer=str(i % 2)),
    )
    result = await DeepConf(fake, make_config(warmup=2, budget=6, variant="high")).solve("q")
    failed = [t for t in result.traces if t.status is TraceStatus.FAILED]
    assert [t.index for t in failed] == [3]
    assert failed[0].error == "connection reset by peer" and failed[0].tokens == 5
    assert failed[0].answer is None
    assert len(result.traces) == 7
    assert sum(t.status is not TraceStatus.FAILED for t in result.traces) == 6
    assert result.tokens.total == 6 * 20 + 5


async def test_a_non_backend_exception_mid_stream_also_fails_only_that_trace() -> None:
    """Anything raised mid-stream (here a ValueError from a broken parser) fails the trace,
    recorded with the exception type, and never sinks the solve."""
    fake = FakeBackend(
        {0: Script(conf=15.0, fail_at=2, error=ValueError("bad chunk"))},
        default=Script(conf=15.0, answer="5"),
    )
    result = await DeepConf(fake, make_config(warmup=2, budget=4)).solve("q")
    assert result.traces[0].status is TraceStatus.FAILED
    assert result.traces[0].error == "ValueError: bad chunk"
    assert result.answer == "5"


async def test_every_trace_failing_raises_backend_error_with_the_first_message() -> None:
    """A dead server: `budget` failures in a row stop the solve with a BackendError quoting
    the first error, after `budget` attempts (plus at most concurrency - 1 already in flight,
    which are cancelled): no endless replacement loop."""
    fake = FakeBackend(
        default=lambda i: Script(fail_at=0, error=StreamError(f"server said no (#{i})"))
    )
    with pytest.raises(BackendError, match=r"5 traces failed in a row.*server said no \(#0\)"):
        async with asyncio.timeout(5):
            await DeepConf(fake, make_config(warmup=2, budget=5, concurrency=2)).solve("q")
    assert 5 <= len(fake.requests) <= 5 + 2 - 1 and fake.in_flight == 0


async def test_failures_separated_by_successes_do_not_add_up_to_a_fatal_streak() -> None:
    """Each good trace is followed by two failing ones: 4 failures in all with budget 3, but
    never 3 in a row, so the solve finishes with its 3 good traces instead of giving up."""
    fake = FakeBackend(
        default=lambda i: Script(conf=15.0, answer=str(i % 2), fail_at=None if i % 3 == 0 else 1)
    )
    cfg = make_config(warmup=2, budget=3, variant="high")
    result = await DeepConf(fake, cfg).solve("q")
    assert sum(t.status is TraceStatus.FAILED for t in result.traces) == 4
    assert [t.index for t in result.traces if t.status is TraceStatus.COMPLETED] == [0, 3, 6]


async def test_fallback_to_majority_when_no_trace_passes_the_filter() -> None:
    """DeepConf-low keeps only the most confident warm-up trace, which has no answer, so the
    vote is empty: the answer is plain majority over completed traces, and `fallback` says so."""
    scripts = {
        0: Script(conf=10.0, answer="5"),
        1: Script(conf=11.0, answer="5"),
        2: Script(conf=12.0, answer="6"),
        3: Script(conf=20.0, answer=None),
    }
    result = await DeepConf(FakeBackend(scripts), make_config(warmup=4, budget=4)).solve("q")
    assert result.threshold == pytest.approx(12 + 0.7 * 8)
    assert result.answer == "5"
    assert result.fallback is not None and "majority" in result.fallback
    assert [(v.answer, v.count) for v in result.votes] == [("5", 2), ("6", 1)]


async def test_truncated_traces_are_marked_and_still_vote() -> None:
    """finish_reason "length" gives status truncated; such a trace ran unpruned to the end
    it was given, so with an answer and enough confidence it votes."""
    fake = FakeBackend(default=Script(conf=15.0, answer="8", finish_reason="length"))
    result = await DeepConf(fake, make_config(warmup=2, budget=2)).solve("q")
    assert {t.status for t in result.traces} == {TraceStatus.TRUNCATED}
    assert result.answer == "8" and result.fallback is None


async def test_cancelling_the_solve_closes_every_stream() -> None:
    """A caller's timeout cancels the solve: every open stream is closed (TaskGroup
    cancellation reaches each trace's aclosing), none is left in flight."""
    gate = asyncio.Event()  # never set: the streams hang like a stalled server
    fake = FakeBackend(default=Script(conf=15.0, gate=gate))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await DeepConf(fake, make_config(warmup=3, concurrency=3)).solve("q")
    assert fake.in_flight == 0 and fake.closed_early == {0, 1, 2}


async def test_a_raising_progress_callback_does_not_sink_the_solve(caplog) -> None:
    """A broken live view is logged and switched off; the solve still returns its answer."""
    calls = []

    def on_progress(p):
        calls.append(p)
        raise RuntimeError("display gone")

    fake = FakeBackend(default=Script(conf=15.0, answer="3"))
    result = await DeepConf(fake, make_config(), on_progress=on_progress).solve("q")
    assert result.answer == "3" and len(calls) == 1
    assert "on_progress raised" in caplog.text


async def test_several_traces_raising_a_deepconf_error_surface_the_first_plainly() -> None:
    """An error that escapes several trace tasks at once (not a backend failure, which the
    traces record) reaches the caller as that deepconf error, not an exception group."""
    from deepconf.errors import ConfigError

    class Refusing(FakeBackend):
        def stream(self, request):  # every trace raises outside the stream, all at once
            raise ConfigError(f"pattern timed out in trace {request.index}")

    fake = Refusing(default=lambda i: Script(fail_at=0, error=StreamError("unused")))
    with pytest.raises(ConfigError, match="pattern timed out in trace"):
        await DeepConf(fake, make_config(budget=4, warmup=2, concurrency=2)).solve("q")


async def test_several_unexpected_errors_at_once_surface_as_their_group(monkeypatch) -> None:
    """A bug that escapes two trace tasks at once (here, recording a trace raises) with no
    deepconf error among them: the caller gets the group itself, every error in it, not a
    StopIteration from looking for a deepconf error or only the first of them."""
    from deepconf.controller import SolveRun

    def broken(self, st) -> None:
        raise RuntimeError(f"bug recording trace {st.index}")

    monkeypatch.setattr(SolveRun, "_finish", broken)
    fake = FakeBackend(default=Script(n=8))
    with pytest.raises(ExceptionGroup) as info:
        await DeepConf(fake, make_config(concurrency=2)).solve("q")
    assert sorted(str(e) for e in info.value.exceptions) == [
        "bug recording trace 0",
        "bug recording trace 1",
    ]
