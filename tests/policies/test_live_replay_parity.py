"""One policy object, two drivers: the live controller (deepconf/online.py, concurrency 1)
and replay (eval/replay.py) make the same decisions on the same trace order, for every
named policy; and PolicyRun decides as a from-scratch reference recount."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.fake_backend import FakeBackend, Script

from deepconf.answers import AnswerKeys
from deepconf.config import POLICY_NAMES, ConfidenceConfig, DeepConfConfig
from deepconf.controller import DeepConf
from deepconf.eval.replay import Pool, PoolTrace, load_pools, simulate_policy
from deepconf.policies import Policy, named_policy, policy_for
from deepconf.policies.stop import reference_should_stop
from deepconf.voting import vote

WINDOW = 8
K = 4  # FakeBackend's top logprobs


def make_scripts(seed: int, n: int, max_len: int = 40, easy: bool = False) -> list[Script]:
    """Traces at a per-trace confidence level (multiples of 1/4: exact in trace files) with
    optional dips; confident traces mostly answer 7, some answer nothing. On an easy problem
    nearly every trace answers 7, so window rules (ESC) get to fire too."""
    rng = np.random.default_rng(seed)
    scripts = []
    for _ in range(n):
        length = int(rng.integers(3, max_len))
        level = float(rng.choice([13.0, 15.0, 17.0, 19.0]))
        confs = level + rng.integers(-4, 5, size=length) / 4.0
        if rng.random() < 0.4 and length > WINDOW:
            start = int(rng.integers(0, length - 4))
            confs[start : start + int(rng.integers(2, 10))] -= float(rng.choice([2.0, 4.0]))
        p7 = 0.97 if easy else (level - 9) / 11
        answer = "7" if rng.random() < p7 else str(rng.choice(["3", "5"]))
        if rng.random() < 0.1:
            answer = None
        scripts.append(Script(conf=confs.tolist(), answer=answer))
    return scripts


def config_for(name: str, budget: int, token_budget: int | None) -> DeepConfConfig:
    return DeepConfConfig(
        mode="online",
        policy=name,
        budget=budget,
        warmup=6,  # deepconf-adaptive may stop after its 4th
        tau=0.9,
        token_budget=token_budget,
        concurrency=1,
        confidence=ConfidenceConfig(top_logprobs=K, window=WINDOW, tail=WINDOW),
    )


@pytest.mark.parametrize("budget,token_budget", [(24, None), (24, 150)])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("easy", [False, True])
async def test_live_and_replay_decide_alike_for_every_policy(
    seed: int, easy: bool, budget: int, token_budget: int | None, tmp_path: Path
) -> None:
    """For every named policy, the live online solve at concurrency 1 and the replay of the
    same traces in the same order pick the same answer, spend the same tokens, launch the
    same traces, and stop for the same reason at the same threshold."""
    scripts = make_scripts(200 + seed, 30, easy=easy)
    path = tmp_path / "t.jsonl"
    offline = config_for("deepconf-low", len(scripts), None).model_copy(
        update={"mode": "offline", "budget": len(scripts)}
    )
    await DeepConf(FakeBackend(dict(enumerate(scripts)), k=K), offline, trace_path=path).solve(
        "q", problem_id="p"
    )
    pool = load_pools([path])["p"]
    order = list(range(len(pool)))
    for name in POLICY_NAMES:
        config = config_for(name, budget, token_budget)
        live = await DeepConf(FakeBackend(dict(enumerate(scripts)), k=K), config).solve("q")
        policy = policy_for(config)
        out = simulate_policy(pool.prepared(), order, policy, budget, token_budget, k=K)
        assert (out.answer, out.tokens) == (live.answer, live.tokens.total), name
        assert out.traces == len(live.traces), name
        assert out.stop_reason == live.stop_reason, name
        assert out.threshold == live.threshold, name


def reference_answer(policy: Policy, pool: Pool, budget: int, k: int) -> tuple[str | None, int]:
    """(answer, traces launched) by recounting everything from scratch after every trace:
    no pruning happens (every trace is shorter than the window) and no token budget."""
    keys = AnswerKeys()
    answers = [t.answer for t in pool.traces]
    metrics = pool.prepared().metrics

    def signal(i: int) -> float:
        m = metrics[i]
        return 0.0 if m is None else policy.signal.value(m, k)

    def form(warm: list[int]) -> tuple[float | None, list[int]]:
        s = policy.filter.threshold([signal(i) for i in warm])
        return s, [i for i in warm if answers[i] is not None and (s is None or signal(i) >= s)]

    def stops(voters: list[int]) -> bool:
        keyed = [keys.key(answers[i]) for i in voters]  # type: ignore[arg-type]
        weights = policy.weights.weights([signal(i) for i in voters])
        return reference_should_stop(policy.stop, keyed, weights)

    w = min(policy.warmup.traces, budget)
    warm: list[int] = []
    stopped = False
    for i in range(w):
        warm.append(i)
        if policy.warmup.checks_after(i + 1) and stops(form(warm)[1]):
            stopped = True
            break
    s, voters = form(warm)
    launched = len(warm)
    stopped = stopped or stops(voters)
    for i in range(w, budget):
        if stopped:
            break
        launched += 1
        if answers[i] is not None and (s is None or signal(i) >= s):
            voters.append(i)
            stopped = stops(voters)
    weights = policy.weights.weights([signal(i) for i in voters])
    table = vote([answers[i] for i in voters], weights, keys)
    if not table.rows:
        table = vote(answers[:launched], keys=keys)
    return table.leader, launched


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("easy", [False, True])
def test_policy_run_matches_a_from_scratch_recount(seed: int, easy: bool) -> None:
    """PolicyRun's incremental decisions (threshold, voters, weights, stop) equal a recount
    of all of them from scratch with the reference stop rules after every trace."""
    scripts = make_scripts(300 + seed, 24, max_len=WINDOW, easy=easy)  # shorter than the window
    traces = [PoolTrace(s.answer, np.asarray(s.conf, dtype=np.float64)) for s in scripts]
    pool = Pool("p", traces, {"window": WINDOW, "tail": WINDOW})
    for name in POLICY_NAMES:
        policy = named_policy(name, warmup=6, tau=0.9)
        out = simulate_policy(pool.prepared(), list(range(24)), policy, 24, k=K)
        assert (out.answer, out.traces) == reference_answer(policy, pool, 24, K), name
