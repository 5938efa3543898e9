"""--keep-percent (config.keep_percent): eta set directly, so a sweep's eta runs live.

Unset, a solve is what it was (eta from the variant or the policy); set, the warm-up filter
keeps the top eta% and the threshold is the tolerant (100 - eta)th percentile; every door
(config, named_policy, the serve request's deepconf object) takes it and refuses what
cannot mean anything."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from support.fake_backend import FakeBackend, Script, make_config

from deepconf.config import KEEP_POLICIES, POLICY_NAMES, DeepConfConfig
from deepconf.controller import DeepConf
from deepconf.errors import ConfigError
from deepconf.policies import named_policy, policy_for
from deepconf.policies.filters import GroupThresholdPrune, TopEtaFilter, reference_threshold
from deepconf.serve import wire
from deepconf.voting import tolerant_threshold

# Warm-up traces whose every token has confidence 10 + i: lowest-group confidences 10..17.
LOWEST = [10.0 + i for i in range(8)]


def _ladder() -> FakeBackend:
    return FakeBackend(default=lambda i: Script(conf=10.0 + i, n=12, answer=str(i)))


@pytest.mark.parametrize("variant", ["low", "high"])
async def test_keep_percent_50_sets_the_median_threshold_whatever_the_variant(variant) -> None:
    """eta = 50 over lowest-group confidences 10..17: s = the 50th percentile (linear) =
    13.5, lowered by the tie tolerance, for either variant; the four warm-up traces at or
    above it vote, weighted by their confidence."""
    cfg = make_config(variant=variant, keep_percent=50, warmup=8, budget=8, concurrency=3)
    result = await DeepConf(_ladder(), cfg).solve("q")
    assert result.threshold == tolerant_threshold(13.5)
    assert result.threshold == reference_threshold(LOWEST, 50.0)
    assert result.threshold == tolerant_threshold(float(np.percentile(LOWEST, 50)))
    assert [v.answer for v in result.votes] == ["7", "6", "5", "4"]
    assert [v.weight for v in result.votes] == [17.0, 16.0, 15.0, 14.0]


@pytest.mark.parametrize(("variant", "s"), [("low", 16.3), ("high", 10.7)])
async def test_unset_keep_percent_is_the_variants(variant: str, s: float) -> None:
    """Without it nothing changes: the 90th (low) or 10th (high) percentile, 10 + 0.9 x 7 =
    16.3 and 10 + 0.1 x 7 = 10.7, as before the field existed."""
    cfg = make_config(variant=variant, warmup=8, budget=8, concurrency=3)
    assert cfg.keep_percent is None
    result = await DeepConf(_ladder(), cfg).solve("q")
    assert result.threshold == reference_threshold(LOWEST, 10.0 if variant == "low" else 90.0)
    assert math.isclose(result.threshold, tolerant_threshold(s), rel_tol=0, abs_tol=1e-12)


def test_keep_percent_names_the_policy_it_runs() -> None:
    """At another eta the policy is renamed (deepconf-low means eta 10); at its own eta it is
    the named policy itself."""
    assert named_policy("deepconf-low", keep_percent=10) == named_policy("deepconf-low")
    assert named_policy("deepconf-high", keep_percent=90) == named_policy("deepconf-high")
    for name in ("deepconf-low", "deepconf-high"):
        p = named_policy(name, keep_percent=50)
        assert (p.name, p.filter) == ("deepconf (η=50)", GroupThresholdPrune(50.0))
    adaptive = named_policy("deepconf-adaptive", keep_percent=25)
    assert (adaptive.name, adaptive.filter) == ("deepconf-adaptive (η=25)", GroupThresholdPrune(25))
    certainty = named_policy("self-certainty", keep_percent=50)
    assert (certainty.name, certainty.filter) == ("self-certainty (η=50)", TopEtaFilter(50.0))
    chosen = policy_for(DeepConfConfig(variant="high", keep_percent=50, warmup=8))
    assert (chosen.name, chosen.filter, chosen.warmup.traces) == (
        "deepconf (η=50)",
        GroupThresholdPrune(50.0),
        8,
    )


def test_keep_policies_are_the_policies_with_a_warmup_filter() -> None:
    """config.KEEP_POLICIES (what the config checks before anything runs) is exactly the set
    of named policies whose filter keeps a top eta%."""
    with_eta = {
        name
        for name in POLICY_NAMES
        if isinstance(named_policy(name).filter, GroupThresholdPrune | TopEtaFilter)
    }
    assert with_eta == set(KEEP_POLICIES)


@pytest.mark.parametrize("eta", [0.0, -5.0, 100.5, math.nan, math.inf])
def test_out_of_range_keep_percent_is_refused_saying_what_it_is(eta: float) -> None:
    with pytest.raises(ValidationError) as info:
        DeepConfConfig(keep_percent=eta)
    message = str(info.value)
    assert "--keep-percent must be above 0 and at most 100" in message
    assert "DeepConf-low keeps 10, -high 90" in message
    assert "leave it unset to use --variant's" in message


def test_the_ends_of_the_range_are_accepted() -> None:
    assert DeepConfConfig(keep_percent=100).keep_percent == 100.0
    assert DeepConfConfig(keep_percent=0.5).keep_percent == 0.5


@pytest.mark.parametrize("policy", ["majority", "esc", "beta", "dirichlet", "cisc"])
def test_a_policy_without_a_filter_refuses_a_keep_percent(policy: str) -> None:
    """A keep percent for a policy that keeps every trace would be silently meaningless."""
    with pytest.raises(ValidationError, match=f"policy '{policy}' has none"):
        DeepConfConfig(policy=policy, keep_percent=50)
    with pytest.raises(ConfigError, match="drop --keep-percent, or choose one of deepconf-low"):
        named_policy(policy, keep_percent=50)


def test_the_serve_request_takes_keep_percent() -> None:
    """`deepconf serve`'s deepconf object maps keep_percent to the config like the other
    keys; a bad value is a SettingsError naming deepconf.keep_percent."""

    def chat(**deepconf: object) -> wire.ChatCompletionRequest:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        return wire.ChatCompletionRequest.model_validate({**body, "deepconf": deepconf})

    defaults = DeepConfConfig()
    assert chat(keep_percent=50).to_config(defaults).keep_percent == 50.0
    assert chat().to_config(defaults).keep_percent is None
    with pytest.raises(wire.SettingsError) as info:
        chat(keep_percent=0).to_config(defaults)
    assert info.value.param == "deepconf.keep_percent"
    assert "must be above 0 and at most 100" in str(info.value)


def test_an_offline_request_to_a_server_with_an_online_policy_runs_offline() -> None:
    """The server's --policy and --keep-percent are its online defaults: a request asking
    for offline gets offline without them (the config refuses a policy with offline), and
    an online request still gets them."""
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    defaults = DeepConfConfig(policy="deepconf-low", keep_percent=30)
    offline = wire.ChatCompletionRequest.model_validate({**body, "deepconf": {"mode": "offline"}})
    config = offline.to_config(defaults)
    assert (config.mode, config.policy, config.keep_percent) == ("offline", None, None)
    online = wire.ChatCompletionRequest.model_validate(body).to_config(defaults)
    assert (online.mode, online.policy, online.keep_percent) == ("online", "deepconf-low", 30.0)
    with pytest.raises(ValidationError, match="policy 'beta' decides online"):
        DeepConfConfig(mode="offline", policy="beta")
