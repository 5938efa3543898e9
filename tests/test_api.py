"""The synchronous API (deepconf.solve) and the package's public names."""

from __future__ import annotations

import threading

import pytest
from support.fake_backend import FakeBackend, Script

import deepconf
from deepconf.api import solve, with_overrides
from deepconf.config import DeepConfConfig
from deepconf.errors import ConfigError
from deepconf.voting import tolerant_threshold


def _fake() -> FakeBackend:
    return FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))


def test_solve_runs_synchronously_with_overrides_and_closes_the_backend() -> None:
    """Called with no event loop: overrides reach the config (budget 6 -> 6 traces; variant
    high keeps the warm-up's top 90%, so s is the 10th percentile of its lowest group
    confidences 10, 11 and 12, less the tie tolerance), nested dicts merge into the section
    (seed set, temperature kept), and the backend is closed."""
    fake = FakeBackend(default=lambda i: Script(conf=10.0 + i, answer=str(i % 2)))
    result = solve(
        "q",
        backend=fake,
        budget=6,
        warmup=3,
        variant="high",
        concurrency=2,
        sampling={"seed": 11},
    )
    assert len(result.traces) == 6
    assert result.variant == "high" and result.threshold == tolerant_threshold(10.2)
    assert sorted(r.seed for r in fake.requests) == list(range(11, 17))
    assert fake.requests[0].sampling.temperature == 0.6
    assert fake.opened == 1 and fake.closed == 1


async def test_solve_works_inside_a_running_event_loop() -> None:
    """From a coroutine (a notebook cell), solve() runs on a worker thread's own loop
    instead of failing with 'asyncio.run() cannot be called from a running event loop'."""
    threads = []

    def on_progress(_):
        threads.append(threading.current_thread().name)

    result = solve("q", backend=_fake(), budget=4, warmup=2, on_progress=on_progress)
    assert len(result.traces) == 4
    assert threads and all(name.startswith("deepconf") for name in threads)


def test_unknown_or_invalid_overrides_raise_config_error_naming_them() -> None:
    """A misspelt setting or a bad value is a ConfigError that names it; cross-field rules
    (warmup <= budget) still apply after overriding."""
    with pytest.raises(ConfigError, match="budgett"):
        solve("q", backend=_fake(), budgett=4)
    with pytest.raises(ConfigError, match="tau"):
        with_overrides(None, {"tau": 2.0})
    with pytest.raises(ConfigError, match="warmup"):
        with_overrides(DeepConfConfig(budget=64), {"budget": 4})


def test_overrides_leave_the_given_config_untouched() -> None:
    """with_overrides returns a new config; the caller's object does not change."""
    base = DeepConfConfig(budget=32)
    new = with_overrides(base, {"budget": 40, "confidence": {"window": 8}})
    assert (base.budget, base.confidence.window) == (32, 2048)
    assert (new.budget, new.confidence.window, new.confidence.top_logprobs) == (40, 8, 20)


def test_public_names_are_exported_with_a_sorted_all() -> None:
    """`from deepconf import X` works for every name in __all__, which is sorted."""
    assert deepconf.__all__ == sorted(deepconf.__all__)
    for name in deepconf.__all__:
        assert getattr(deepconf, name) is not None
    for name in ("DeepConf", "DeepConfConfig", "solve", "SolveResult", "TraceRecord"):
        assert name in deepconf.__all__
    with pytest.raises(AttributeError):
        _ = deepconf.no_such_name
