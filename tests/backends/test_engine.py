"""Engine tests on the deterministic fake model: sampling, logprobs, continuous batching,
shared prefill, stops and aborts."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from support.fake_model import PIECES, FakeModel, FakeTokenizer
from support.polling import until

from deepconf.backends.async_engine import AsyncEngine
from deepconf.backends.engine import Engine, SamplingParams, StepOutput
from deepconf.backends.sampling import (
    sample_batch,
    sample_reference,
    top_logprobs,
    top_logprobs_reference,
)
from deepconf.errors import BackendError, ConfigError

TOK = FakeTokenizer()
PROMPTS = [TOK.encode(p) for p in ("1+2=", "3+4=", "ab ", "9.9", "bad. ")]


def run(
    engine: Engine, requests: dict[str, tuple[list[int], SamplingParams]], *, at=None, abort=None
):
    """Drive `engine` to completion; `at[rid]` delays a request to that step, `abort[rid]`
    aborts it after that step. Returns each request's outputs in order."""
    at, abort = at or {}, abort or {}
    outs: dict[str, list[StepOutput]] = {rid: [] for rid in requests}
    step = 0
    pending = dict(requests)
    while pending or engine.has_work:
        for rid in [r for r in pending if at.get(r, 0) <= step]:
            engine.add_request(rid, *pending.pop(rid))
        for out in engine.step():
            outs[out.request_id].append(out)
        for rid, when in abort.items():
            if when == step:
                assert engine.abort(rid)
        step += 1
        assert step < 10_000
    return outs


def alone(rid: str, prompt: list[int], params: SamplingParams) -> list[StepOutput]:
    return run(Engine(FakeModel(), TOK, max_batch=1), {rid: (prompt, params)})[rid]


def same(a: list[StepOutput], b: list[StepOutput]) -> bool:
    return (
        [o.token_id for o in a] == [o.token_id for o in b]
        and "".join(o.text for o in a) == "".join(o.text for o in b)
        and all(np.array_equal(x.top_ids, y.top_ids) for x, y in zip(a, b, strict=True))
        and all(np.allclose(x.top_logprobs, y.top_logprobs) for x, y in zip(a, b, strict=True))
        and [o.finish_reason for o in a] == [o.finish_reason for o in b]
    )


def test_batched_sampler_matches_row_reference():
    """sample_batch (vectorised, sorted only where filtering) picks the same token as the
    step-by-step one-row reference for mixed greedy/temperature/top-p/top-k rows."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(200, 37)) * 3).astype(np.float32)
    temp = rng.choice([0.0, 0.3, 1.0, 1.7], size=200)
    top_p = rng.choice([1.0, 0.9, 0.5, 0.05], size=200)
    top_k = rng.choice([0, 1, 5, 36, 40], size=200)
    u = rng.random(200)
    got = sample_batch(logits, temperature=temp, top_p=top_p, top_k=top_k, uniforms=u)
    want = [sample_reference(logits[i], temp[i], top_p[i], top_k[i], u[i]) for i in range(200)]
    assert got.tolist() == want


@pytest.mark.parametrize(("top_p", "top_k"), [(1.0, 0), (0.8, 0), (1.0, 3), (0.6, 4)])
def test_sampling_distribution_is_exact(top_p, top_k):
    """With uniforms on a fine grid, each token's share equals its filtered, renormalised
    probability within 1/grid: top-k first, then the smallest top-p nucleus (vLLM's order)."""
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], np.float32)
    n = 20_000
    u = (np.arange(n) + 0.5) / n
    tokens = sample_batch(
        np.repeat(logits, n, 0),
        temperature=np.full(n, 0.7),
        top_p=np.full(n, top_p),
        top_k=np.full(n, top_k),
        uniforms=u,
    )
    p = np.exp(logits[0] / 0.7)
    p /= p.sum()
    if top_k:
        p[top_k:] = 0
        p /= p.sum()
    keep = (np.cumsum(p) - p) < top_p
    p = np.where(keep, p, 0)
    p /= p.sum()
    share = np.bincount(tokens, minlength=6) / n
    np.testing.assert_allclose(share, p, atol=2 / n)


def test_top_logprobs_match_full_log_softmax():
    """The argpartition top-k log-softmax equals a full float64 log-softmax and sort."""
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(8, 50)) * 4).astype(np.float32)
    ids, lps, _ = top_logprobs(logits, 20)
    for i in range(8):
        ref_ids, ref_lps = top_logprobs_reference(logits[i], 20)
        assert ids[i].tolist() == ref_ids
        np.testing.assert_allclose(lps[i], ref_lps, atol=1e-5)
    assert top_logprobs(logits, 80)[0].shape == (8, 50)


def test_continuous_batching_equals_running_each_alone():
    """Requests that join late, wait for a slot (3 slots, 6 requests) and leave early produce
    exactly the tokens, text and logprobs they produce when run alone with the same seed."""
    reqs = {
        f"r{i}": (
            PROMPTS[i % 5],
            SamplingParams(
                temperature=[0.0, 0.8, 1.2][i % 3],
                top_p=[1.0, 0.9][i % 2],
                top_k=[None, 5][i % 2],
                max_tokens=10 + 3 * i,
                seed=100 + i,
                logprobs=[0, 3, 20][i % 3],
            ),
        )
        for i in range(6)
    }
    model = FakeModel()
    outs = run(Engine(model, TOK, max_batch=3), reqs, at={"r3": 4, "r5": 9})
    assert max(model.decode_calls) == 3 and len(set(model.decode_calls)) > 1
    for rid, (prompt, params) in reqs.items():
        assert same(outs[rid], alone(rid, prompt, params)), rid
        assert outs[rid][-1].finish_reason is not None


def test_shared_prefill_equals_separate_prefills():
    """N traces of one prompt prefill it once (copy_slot forks the state) and produce the same
    outputs as an engine that prefills each trace separately."""
    reqs = {
        f"t{i}": (PROMPTS[0], SamplingParams(temperature=1.0, seed=i, max_tokens=12, logprobs=5))
        for i in range(8)
    }
    shared_model, separate_model = FakeModel(), FakeModel()
    shared = run(Engine(shared_model, TOK, max_batch=8), reqs)
    separate = run(Engine(separate_model, TOK, max_batch=8, prefix_slots=0), reqs)
    assert shared_model.prefill_calls == 1 and separate_model.prefill_calls == 8
    for rid in reqs:
        assert same(shared[rid], separate[rid])
    # The traces really differ (distinct seeds), so the equality above is not vacuous.
    assert len({tuple(o.token_id for o in v) for v in shared.values()}) > 4


def test_prefix_lru_evicts_oldest_and_stays_correct():
    """More distinct prompts than prefix slots: evicted prompts are prefilled again and the
    outputs still equal a run without any prefix cache."""
    order = [(i // 3) % 5 for i in range(18)]  # prompts 0..4 three times each, then 0 again
    reqs = {
        f"p{i}": (PROMPTS[j], SamplingParams(seed=i, max_tokens=5)) for i, j in enumerate(order)
    }
    model = FakeModel()
    outs = run(Engine(model, TOK, max_batch=2, prefix_slots=2), reqs)
    ref = run(Engine(FakeModel(), TOK, max_batch=2, prefix_slots=0), reqs)
    assert all(same(outs[r], ref[r]) for r in reqs)
    assert model.prefill_calls == 6  # one per prompt, plus prompt 0 again after its eviction


def test_seeds_are_reproducible_and_distinct():
    """The same seed gives the same text; different seeds give different texts."""
    p = PROMPTS[2]
    a = alone("a", p, SamplingParams(temperature=1.0, seed=7, max_tokens=30))
    b = alone("b", p, SamplingParams(temperature=1.0, seed=7, max_tokens=30))
    c = alone("c", p, SamplingParams(temperature=1.0, seed=8, max_tokens=30))
    assert [o.token_id for o in a] == [o.token_id for o in b]
    assert [o.token_id for o in a] != [o.token_id for o in c]


def test_temperature_zero_is_greedy():
    """At temperature 0 every token is the argmax of the model's logits for its history."""
    model = FakeModel(eos_bias=-50.0)
    outs = alone("g", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=15, seed=3))
    cache = model.allocate_cache(1, 64)
    logits = model.prefill(np.array(PROMPTS[1]), cache, 0)
    for o in outs:
        assert o.token_id == int(np.argmax(logits))
        logits = model.decode(np.array([o.token_id]), cache, np.array([0]))[0]


def test_logprobs_are_raw_whatever_the_temperature():
    """Top-k logprobs and the sampled token's logprob come from the unscaled logits: the first
    position's values are identical at temperature 0.2 and 2.0 and equal log_softmax(logits)."""
    model = FakeModel()
    logits = model.prefill(np.array(PROMPTS[3]), model.allocate_cache(1, 64), 0)
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    for t in (0.2, 2.0):
        first = alone("x", PROMPTS[3], SamplingParams(temperature=t, seed=1, logprobs=6))[0]
        assert first.top_ids.tolist() == np.argsort(-logp)[:6].tolist()
        np.testing.assert_allclose(first.top_logprobs, np.sort(logp)[::-1][:6], atol=1e-5)
        assert first.logprob == pytest.approx(logp[first.token_id], abs=1e-5)


def test_text_deltas_never_split_a_multibyte_character():
    """Deltas concatenate to the decoded token ids, and a delta never ends inside a UTF-8
    character unless the sequence has ended (the fake vocabulary holds split é and €)."""
    for seed in range(20):
        outs = alone("m", PROMPTS[0], SamplingParams(temperature=1.5, seed=seed, max_tokens=40))
        ids = [o.token_id for o in outs if o.token_id != TOK.eos_token_id]
        assert "".join(o.text for o in outs) == TOK.decode(ids)
        for o in outs[:-1]:
            assert not o.text.endswith("\ufffd")


def test_stop_string_eos_and_max_tokens():
    """A stop string ends the sequence with 'stop' and the text stops before it; EOS ends it
    with 'stop' and no text; max_tokens ends it with 'length' after exactly that many tokens."""
    stop_id = PIECES.index(b"STOP")
    model = FakeModel()
    model.table[:, stop_id] += 3.0  # make the stop piece common
    engine = Engine(model, TOK, max_batch=4)
    params = SamplingParams(temperature=1.0, seed=2, max_tokens=200, stop=("STOP",))
    outs = run(engine, {"s": (PROMPTS[0], params)})["s"]
    text = "".join(o.text for o in outs)
    assert outs[-1].finish_reason == "stop" and outs[-1].token_id == stop_id
    assert "STOP" not in text and text == TOK.decode([o.token_id for o in outs[:-1]])
    assert outs[-1].stop_reason == "STOP"

    eos_model = FakeModel(eos_bias=8.0)
    outs = run(Engine(eos_model, TOK), {"e": (PROMPTS[0], SamplingParams(seed=0, max_tokens=99))})
    assert outs["e"][-1].token_id == 1 and outs["e"][-1].finish_reason == "stop"
    assert outs["e"][-1].text == ""

    outs = alone("l", PROMPTS[0], SamplingParams(seed=0, max_tokens=7, ignore_eos=True))
    assert len(outs) == 7 and outs[-1].finish_reason == "length"
    assert [o.finish_reason for o in outs[:-1]] == [None] * 6


def test_stop_string_spanning_tokens_is_held_back():
    """A stop string that arrives over several tokens ("1+" then "2") is never streamed."""
    plus, two = PIECES.index(b"+"), PIECES.index(b"2")
    model = FakeModel(eos_bias=-50.0)
    model.table[:, plus] += 4.0
    model.table[:, two] += 4.0
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=300, stop=("+2",))
    outs = run(Engine(model, TOK), {"h": (PROMPTS[0], params)})["h"]
    text = "".join(o.text for o in outs)
    assert outs[-1].finish_reason == "stop" and "+2" not in text
    assert TOK.decode([o.token_id for o in outs]).startswith(text + "+2")


def test_context_length_limit_ends_with_length():
    """A sequence stops at the engine's max_len (prompt + generated) with 'length'."""
    engine = Engine(FakeModel(eos_bias=-50.0), TOK, max_len=12)
    outs = run(engine, {"c": (PROMPTS[0], SamplingParams(seed=1, max_tokens=100))})["c"]
    assert len(PROMPTS[0]) + len(outs) == 12 and outs[-1].finish_reason == "length"
    with pytest.raises(ConfigError, match="context"):
        engine.add_request("too-long", [3] * 12, SamplingParams())


def test_abort_frees_the_slot_and_leaves_others_unchanged():
    """Aborting a running request frees its slot for a queued one, and every other request's
    outputs equal its solo run."""
    reqs = {
        f"a{i}": (
            PROMPTS[i],
            SamplingParams(temperature=1.0, seed=i, max_tokens=25, ignore_eos=True, logprobs=2),
        )
        for i in range(4)
    }
    engine = Engine(FakeModel(), TOK, max_batch=2)
    outs = run(engine, reqs, abort={"a0": 3})
    assert len(outs["a0"]) == 4 and outs["a0"][-1].finish_reason is None
    assert engine.stats.aborted == 1 and engine.stats.running == 0
    for rid in ("a1", "a2", "a3"):
        assert same(outs[rid], alone(rid, *reqs[rid]))
    assert not engine.abort("a0") and not engine.abort("nope")
    assert sorted(engine._free) == [0, 1]


def test_bad_requests_raise_config_errors():
    """Empty prompts, out-of-range ids, duplicate ids and bad params fail with ConfigError."""
    engine = Engine(FakeModel(), TOK)
    with pytest.raises(ConfigError, match="empty"):
        engine.add_request("e", [], SamplingParams())
    with pytest.raises(ConfigError, match="out of range"):
        engine.add_request("o", [999], SamplingParams())
    engine.add_request("d", [3], SamplingParams())
    with pytest.raises(ConfigError, match="in use"):
        engine.add_request("d", [3], SamplingParams())
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"stop": ("",)}):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)


class BrokenModel(FakeModel):
    """Decoding fails after a few steps, as a model bug would."""

    def decode(self, tokens, cache, slots):
        if len(self.decode_calls) >= 3:
            raise FloatingPointError("boom")
        return super().decode(tokens, cache, slots)


async def test_async_engine_streams_aborts_and_shuts_down():
    """AsyncEngine yields what the sync engine yields; closing the async generator aborts the
    request; close() fails in-flight requests with BackendError and refuses new ones."""
    params = SamplingParams(temperature=1.0, seed=4, max_tokens=20, logprobs=3)
    engine = AsyncEngine(Engine(FakeModel(), TOK, max_batch=2))
    got = [o async for outs in engine.generate(PROMPTS[0], params) for o in outs]
    assert same(got, alone("x", PROMPTS[0], params))

    long = SamplingParams(max_tokens=10_000, ignore_eos=True)
    async with contextlib.aclosing(engine.generate(PROMPTS[1], long)) as stream:
        async for _ in stream:
            break
    await until(lambda: engine.stats.aborted == 1, "the closed stream's request aborted")
    assert engine.stats.aborted == 1 and engine.stats.running == 0

    stream = engine.generate(PROMPTS[1], long)
    await anext(stream)
    await asyncio.to_thread(engine.close)
    with pytest.raises(BackendError, match="closed"):
        async for _ in stream:
            pass
    with pytest.raises(BackendError, match="closed"):
        await anext(engine.generate(PROMPTS[1], long))


async def test_async_engine_reports_model_failures_and_bad_prompts():
    """A model error fails the running requests with BackendError instead of hanging them, and
    a prompt the engine refuses fails only that request with its ConfigError."""
    engine = AsyncEngine(Engine(BrokenModel(), TOK))
    with pytest.raises(BackendError, match="boom"):
        async for _ in engine.generate(PROMPTS[0], SamplingParams(max_tokens=50, ignore_eos=True)):
            pass
    with pytest.raises(ConfigError, match="out of range"):
        await anext(engine.generate([999], SamplingParams()))
    engine.close()
