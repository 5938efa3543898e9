"""Signals, weights, filters and warm-up rules against their slow references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepconf.confidence import token_confidence, trace_metrics
from deepconf.errors import ConfigError
from deepconf.policies.filters import (
    GroupThresholdPrune,
    NoFilter,
    TopEtaFilter,
    reference_threshold,
    warmup_threshold,
)
from deepconf.policies.signals import (
    MetricSignal,
    SelfCertainty,
    SoftmaxWeights,
    reference_self_certainty,
    reference_softmax,
)
from deepconf.policies.warmup import AdaptiveWarmup, FixedWarmup
from deepconf.voting import keep_top

logprob_rows = st.integers(1, 8).flatmap(
    lambda k: arrays(
        np.float64, st.tuples(st.integers(1, 30), st.just(k)), elements=st.floats(-30.0, 0.0)
    )
)


@settings(max_examples=100, deadline=None)
@given(logprob_rows)
def test_self_certainty_is_the_mean_kl_from_uniform_over_the_top_k(lp: np.ndarray) -> None:
    """Self-certainty from the stored token confidences (mean C - ln k) equals the mean over
    tokens of KL(U_k || p) computed from the top-k logprobs by its definition."""
    k = lp.shape[1]
    metrics = trace_metrics(token_confidence(lp), window=4, tail=4)
    fast = SelfCertainty().value(metrics, k)
    assert math.isclose(fast, reference_self_certainty(lp), rel_tol=1e-9, abs_tol=1e-9)


def test_self_certainty_is_zero_for_a_flat_top_k() -> None:
    """KL(U || U) = 0: a position whose k candidates are equally likely is not certain."""
    lp = np.full((5, 4), math.log(0.25))
    metrics = trace_metrics(token_confidence(lp), window=2)
    assert abs(SelfCertainty().value(metrics, 4)) < 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 25.0), min_size=1, max_size=40), st.floats(0.5, 5.0))
def test_softmax_weights_match_the_definition(signals: list[float], temperature: float) -> None:
    """CISC's weights equal exp(s/T) / sum exp(s/T), sum to 1 and keep the signals' order."""
    fast = SoftmaxWeights(temperature).weights(signals)
    slow = reference_softmax(signals, temperature)
    assert all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300) for a, b in zip(fast, slow, strict=True)
    )
    assert math.isclose(sum(fast), 1.0, rel_tol=1e-9)
    for i in range(len(signals)):
        for j in range(len(signals)):
            if signals[i] > signals[j]:
                assert fast[i] >= fast[j]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(5.0, 25.0), min_size=1, max_size=40),
    st.sampled_from([10.0, 50.0, 90.0, 100.0]),
)
def test_top_eta_threshold_is_the_hand_computed_percentile(values: list[float], eta: float) -> None:
    """The threshold equals linear interpolation between order statistics done by hand, and
    the traces at or above it are exactly those keep_top (the offline filter) keeps."""
    s = TopEtaFilter(eta).threshold(values)
    assert s is not None
    assert math.isclose(s, reference_threshold(values, eta), rel_tol=1e-12, abs_tol=1e-12)
    assert s == GroupThresholdPrune(eta).threshold(values)
    kept = [v >= s for v in values]
    assert kept == keep_top(values, eta).tolist()


def test_deepconf_low_keeps_about_the_top_tenth_of_sixteen() -> None:
    """16 warm-up values: the 90th percentile sits between the 14th and 15th order
    statistics, so 2 traces pass (the paper's "about 2 of 16")."""
    values = [float(v) for v in range(16)]
    s = warmup_threshold(np.array(values), 10.0)
    assert sum(v >= s for v in values) == 2


def test_no_filter_sets_no_threshold_and_only_the_group_rule_prunes() -> None:
    assert NoFilter().threshold([1.0, 2.0]) is None
    assert (NoFilter().prunes, TopEtaFilter().prunes, GroupThresholdPrune().prunes) == (
        False,
        False,
        True,
    )


@pytest.mark.parametrize("metric", ["mean", "tail", "bottom", "lowest"])
def test_metric_signals_read_the_trace_metric(metric: str) -> None:
    """DeepConf's signals are the trace metrics (tested against their loop references in
    tests/test_confidence.py) under their own names."""
    m = trace_metrics(np.array([15.0, 12.0, 18.0, 11.0, 16.0]), window=2, tail=2)
    assert MetricSignal(metric).value(m, 20) == m.get(metric)


def test_unknown_signal_and_bad_warmups_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        MetricSignal("median")
    with pytest.raises(ConfigError):
        AdaptiveWarmup(4, 5)
    with pytest.raises(ConfigError):
        FixedWarmup(0)
    with pytest.raises(ConfigError):
        SoftmaxWeights(0.0)


def test_adaptive_warmup_checks_from_its_minimum_and_fixed_never() -> None:
    assert [AdaptiveWarmup(8, 3).checks_after(n) for n in range(1, 6)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert not any(FixedWarmup(8).checks_after(n) for n in range(1, 9))
