"""Online DeepConf (Algorithm 2) against a scripted backend: warm-up, threshold, pruning,
consensus, budgets, seeds, and the confident-minority scenario."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support.fake_backend import FakeBackend, Script, make_config

from deepconf.controller import DeepConf, SolveRun
from deepconf.trace import TraceStatus
from deepconf.voting import AnswerKeys


@pytest.mark.parametrize(
    ("variant", "threshold", "voters"),
    # lowest-group confidences 10..17: the 90th percentile (linear) is 10 + 0.9*7 = 16.3,
    # the 10th is 10 + 0.1*7 = 10.7.
    [("low", 16.3, ["7"]), ("high", 10.7, ["7", "6", "5", "4", "3", "2", "1"])],
)
async def test_warmup_runs_unpruned_and_sets_the_percentile_threshold(
    variant, threshold, voters
) -> None:
    """`warmup` traces run to completion, s is the (100 - keep)th percentile of their lowest
    group confidences, and exactly the warm-up traces with lowest >= s vote, weighted by it."""
    fake = FakeBackend(default=lambda i: Script(conf=10.0 + i, n=12, answer=str(i)))
    cfg = make_config(variant=variant, warmup=8, budget=8, concurrency=3)
    result = await DeepConf(fake, cfg).solve("q")
    assert len(result.traces) == 8
    assert all(t.phase == "warmup" and t.status is TraceStatus.COMPLETED for t in result.traces)
    # s is lowered by the tie tolerance (1e-6 relative): float noise never decides a vote.
    assert result.threshold == pytest.approx(threshold, rel=2e-6)
    assert [v.answer for v in result.votes] == voters
    assert [v.weight for v in result.votes] == pytest.approx([float(a) + 10 for a in voters])
    assert result.tokens.warmup == 8 * 12 and result.tokens.online == 0
    assert not fake.closed_early


async def test_prune_fires_at_the_first_full_window_below_threshold_not_before() -> None:
    """With window 4 and s = 15: a trace opening with three tokens at 10 (partial means 10)
    and then 30 is not pruned (no full window before token 4, whose mean is exactly 15, not
    below), and a trace that falls from 20 to 5 is pruned at token 8, the first
    window whose mean (20+20+5+5)/4 = 12.5 < 15 (token 7's window, 16.25, passes). Its stream
    is closed right there, mid-batch tokens received are counted, and it never votes."""
    confs_late_dip = [20.0] * 6 + [5.0] * 10
    confs_early_dip = [10.0, 10.0, 10.0] + [30.0] * 9
    fake = FakeBackend(
        {
            0: Script(conf=15.0, n=8, answer="1"),
            1: Script(conf=15.0, n=8, answer="2"),
            2: Script(conf=confs_late_dip, chunks=[3], answer="9", text_first=True),
            3: Script(conf=confs_early_dip, answer="2"),
        }
    )
    result = await DeepConf(fake, make_config(warmup=2, budget=4)).solve("q")
    assert result.threshold == pytest.approx(15.0, rel=2e-6)  # less the tie tolerance
    pruned, early = result.traces[2], result.traces[3]
    assert pruned.status is TraceStatus.PRUNED and pruned.pruned_at == 8
    assert pruned.tokens == 9 == fake.delivered[2]  # batch 7..9 had arrived
    assert pruned.answer == "9"  # it had an answer, yet it does not vote
    assert fake.closed_early == {2}
    assert early.status is TraceStatus.COMPLETED and early.metrics.lowest == 15.0
    assert {v.answer: v.count for v in result.votes} == {"1": 1, "2": 2}
    assert result.tokens.total == 8 + 8 + 9 + 12  # the pruned trace's tokens count


async def test_consensus_stops_generation_once_beta_reaches_tau() -> None:
    """Warm-up votes 1,2,1 (beta 2/3); each further trace votes 1, so beta = (n-1)/n and
    first reaches tau = 0.9 at n = 10 votes: 3 warm-up + 7 online traces, out of 50."""
    fake = FakeBackend({1: Script(conf=15.0, answer="2")}, default=Script(conf=15.0, answer="1"))
    cfg = make_config(variant="high", warmup=3, budget=50, tau=0.9)
    result = await DeepConf(fake, cfg).solve("q")
    assert result.stop_reason == "consensus"
    assert len(result.traces) == 10
    assert result.beta == pytest.approx(0.9)
    assert result.answer == "1"


async def test_consensus_right_after_warmup_launches_nothing_more() -> None:
    """Agreeing warm-up survivors give beta = 1 >= tau: no online trace is launched."""
    fake = FakeBackend(default=Script(conf=15.0, answer="42"))
    result = await DeepConf(fake, make_config(warmup=4, budget=64)).solve("q")
    assert result.stop_reason == "consensus"
    assert len(fake.requests) == 4 and result.answer == "42" and result.beta == 1.0


async def test_trace_budget_counts_warmup_and_stops_at_budget() -> None:
    """Answers alternate so beta never reaches tau: exactly `budget` traces run, warm-up
    included, and the stop reason says budget."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))
    result = await DeepConf(fake, make_config(warmup=2, budget=6, variant="high")).solve("q")
    assert len(result.traces) == 6 and len(fake.requests) == 6
    assert [t.phase for t in result.traces] == ["warmup"] * 2 + ["online"] * 4
    assert result.stop_reason == "budget"


async def test_token_budget_stops_mid_trace_and_counts_every_token() -> None:
    """Traces of 20 tokens, token budget 50: the third trace is cut at token 10 (cancelled,
    stream closed) and the solve stops with exactly 50 tokens spent."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, n=20, answer=str(i)))
    cfg = make_config(warmup=2, budget=10, token_budget=50, variant="high")
    result = await DeepConf(fake, cfg).solve("q")
    assert result.stop_reason == "token_budget"
    assert result.tokens.total == 50
    assert result.traces[2].status is TraceStatus.CANCELLED and result.traces[2].tokens == 10
    assert fake.closed_early == {2} and len(result.traces) == 3


async def test_stop_cancels_in_flight_traces_closes_streams_and_counts_tokens() -> None:
    """At consensus, the traces still in flight are cancelled: two long streams and one
    stalled before its first token (so only an explicit cancel can end it). Their streams
    are closed early, their status is cancelled, and the tokens they received count."""
    stalled = asyncio.Event()  # never set
    fake = FakeBackend(
        {
            0: Script(conf=15.0, answer="1"),
            1: Script(conf=15.0, answer="2"),
            2: Script(conf=15.0, n=10, answer="1"),
            5: Script(conf=15.0, gate=stalled),
        },
        default=Script(conf=15.0, n=5000, answer="3"),
    )
    cfg = make_config(warmup=2, budget=6, tau=0.6, concurrency=4)
    async with asyncio.timeout(5):
        result = await DeepConf(fake, cfg).solve("q")
    assert result.stop_reason == "consensus" and result.answer == "1"
    cancelled = [t for t in result.traces if t.status is TraceStatus.CANCELLED]
    assert [t.index for t in cancelled] == [3, 4, 5]
    assert fake.closed_early == {3, 4, 5} and fake.in_flight == 0
    assert all(0 < t.tokens == fake.delivered[t.index] < 5000 for t in cancelled[:2])
    assert cancelled[2].tokens == 0
    assert result.tokens.total == sum(fake.delivered.values())


async def test_concurrency_bounds_the_streams_in_flight() -> None:
    """With concurrency 3 and paced streams, at most 3 are ever open at once, and 3 are."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, n=6, delay=0.002, answer=str(i % 2)))
    cfg = make_config(warmup=4, budget=12, concurrency=3, variant="high")
    result = await DeepConf(fake, cfg).solve("q")
    assert fake.max_in_flight == 3
    assert len(result.traces) == 12


async def test_trace_seeds_are_seed_plus_index_and_unset_without_a_seed() -> None:
    """Trace i is sent seed + i; with no seed configured, none is sent."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))
    await DeepConf(fake, make_config(sampling={"seed": 100}, variant="high")).solve("q")
    assert sorted((r.index, r.seed) for r in fake.requests) == [(i, 100 + i) for i in range(8)]
    fake2 = FakeBackend(default=lambda i: Script(conf=15.0, answer=str(i % 2)))
    await DeepConf(fake2, make_config(variant="high")).solve("q")
    assert {r.seed for r in fake2.requests} == {None}


def _confident_minority(index: int) -> Script:
    """Warm-up (0..7): 42 at 0, 3, 6 with confidence 18; 7 at the others, confidence 12,
    except trace 7 at 10. Later: every third trace says 42 at 18; the rest say 7 and start
    at 16 but fall to 9 after 30 tokens (a trace losing its way)."""
    if index < 8:
        if index % 3 == 0:
            return Script(conf=18.0, n=200, answer="42")
        return Script(conf=10.0 if index == 7 else 12.0, n=200, answer="7")
    if index % 3 == 0:
        return Script(conf=18.0, n=200, answer="42", chunks=[7])
    return Script(conf=[16.0] * 30 + [9.0] * 170, answer="7", chunks=[7])


async def test_online_picks_the_confident_answer_with_fewer_tokens_than_majority() -> None:
    """Plain majority over the full budget (offline, 64 traces) says 7; online DeepConf-high
    prunes the faltering 7-traces and stops at consensus on 42, spending far fewer tokens.

    s = 10th percentile of [10, 12 x4, 18 x3] = 11.4; warm-up votes: 7 -> 48, 42 -> 54.
    Each online 42 adds 18; beta >= 0.8 needs 42-weight >= 192, i.e. 11 votes of 42 (8
    online, the last at index 30). The 15 online 7-traces are pruned at token 41, the first
    window (16 tokens) whose mean 16 - 7*11/16 < 11.4."""
    cfg = make_config(variant="high", warmup=8, budget=64, tau=0.8, window=16)
    offline = await DeepConf(
        FakeBackend(default=_confident_minority), cfg.model_copy(update={"mode": "offline"})
    ).solve("q")
    online = await DeepConf(FakeBackend(default=_confident_minority), cfg).solve("q")

    assert offline.methods["majority"] == "7"
    assert online.answer == "42" and online.stop_reason == "consensus"
    assert online.threshold == pytest.approx(11.4)
    pruned = [t for t in online.traces if t.status is TraceStatus.PRUNED]
    assert len(pruned) == 15 and {t.pruned_at for t in pruned} == {41}
    assert len(online.traces) == 31
    assert online.tokens.total == 16 * 200 + 15 * 42  # pruned mid-batch of 7: 42 received
    assert online.tokens_majority_estimate == 64 * 200 == offline.tokens.total
    saved = 1 - online.tokens.total / offline.tokens.total
    print(f"online {online.tokens.total} tokens vs majority {offline.tokens.total}: {saved:.0%}")
    assert saved > 0.7
    assert np.isclose(online.beta, 198 / (198 + 48))


def _reference_prune(confs: np.ndarray, window: int, s: float) -> int | None:
    """Slow reference: the first 1-based position whose trailing full window averages
    below s, one token at a time."""
    for p in range(window, len(confs) + 1):
        if sum(confs[p - window : p]) / window < s:
            return p
    return None


@pytest.mark.parametrize("seed", range(6))
async def test_prune_position_matches_the_token_by_token_reference(seed) -> None:
    """For random confidence walks cut into random batch sizes, the controller's batched
    prune (push_many + vectorised position search) stops exactly where the token-by-token
    reference does, and the tokens counted are those of every batch received up to it."""
    rng = np.random.default_rng(seed)
    window, n, s = 8, 300, 15.0
    confs = np.clip(17.0 + np.cumsum(rng.normal(-0.02, 0.6, n)), 0, 30)
    chunks = rng.integers(1, 12, size=50).tolist()
    fake = FakeBackend(
        {2: Script(conf=confs.tolist(), chunks=chunks, answer="9")},
        default=lambda i: Script(conf=s, n=10, answer=str(i)),
    )
    result = await DeepConf(fake, make_config(warmup=2, budget=3, window=window)).solve("q")
    trace = result.traces[2]
    expected = _reference_prune(confs, window, s)
    assert expected is not None  # each of these walks drifts below s (at tokens 19..103)
    ends = np.cumsum([min(c, n) for c in (chunks * n)])  # batch end positions
    batch_end = int(min(ends[ends >= expected][0], n))
    assert trace.status is TraceStatus.PRUNED and trace.pruned_at == expected
    assert trace.tokens == batch_end == fake.delivered[2]


async def test_progress_shows_a_provisional_majority_leader_during_warmup() -> None:
    """Before the threshold exists, the live view's leader is plain majority over the
    warm-up traces finished so far (here 7, 7, 3 in order: 7 leads from the first); the
    final answer still comes from the confidence vote, which picks the confident 3."""
    scripts = {0: Script(conf=12.0, answer="7"), 1: Script(conf=12.0, answer="7")}
    fake = FakeBackend(scripts, default=Script(conf=18.0, answer="3"))
    seen: list[tuple[str, str | None, float | None]] = []
    cfg = make_config(variant="low", warmup=3, budget=3, concurrency=1)
    result = await DeepConf(
        fake, cfg, on_progress=lambda p: seen.append((p.phase, p.leader, p.threshold))
    ).solve("q")
    warmup_leaders = [leader for phase, leader, s in seen if phase == "warmup" and s is None]
    assert "7" in warmup_leaders and all(x in (None, "7") for x in warmup_leaders)
    assert result.answer == "3"


@pytest.mark.parametrize("status", list(TraceStatus))
def test_only_traces_that_ran_to_their_end_vote_online(status) -> None:
    """A pruned, cancelled or failed trace never votes, even with an answer and a lowest
    group above the threshold (a cancelled trace can carry a complete \\boxed{} answer);
    a trace that ran to its end votes when its lowest group reaches the threshold."""
    from deepconf.answers import AnswerKeys
    from deepconf.confidence import TraceMetrics
    from deepconf.policies import Ended, PolicyRun, policy_for
    from deepconf.trace import TraceRecord

    def ended(index: int, lowest: float, status: TraceStatus) -> Ended:
        metrics = TraceMetrics(mean=9.0, tail=9.0, bottom=9.0, lowest=lowest)
        record = TraceRecord(index, "online", status, 10, answer="7", metrics=metrics)
        return Ended(record.index, record.answer, record.metrics, record.finished)

    decide = PolicyRun(policy_for(make_config(warmup=1, budget=8)), 8, 20, AnswerKeys())
    decide.warmup_ended(ended(0, 8.0, TraceStatus.COMPLETED))
    decide.end_warmup()  # one warm-up trace: s = its lowest group, 8.0 (less the tolerance)
    ran_to_end = status in (TraceStatus.COMPLETED, TraceStatus.TRUNCATED)
    decide.ended(ended(1, 9.0, status))
    decide.ended(ended(2, 7.5, status))  # below the threshold: never
    assert [v.index for v in decide.voters] == ([0, 1] if ran_to_end else [0])


async def test_a_weight_tie_goes_to_the_lower_trace_index_not_the_first_to_finish() -> None:
    """Online traces vote in index order, so the vote's last tie-break ("first seen") is the
    lower trace index, which seeds fix, not the finish order, which timing fixes.

    Warm-up: trace 0 (conf 10) and traces 1, 2 (conf 20, answers c, d) set s ~= 20; c and d
    vote 20 each (beta 0.5). Online: trace 3 answers a, slowly; trace 4 answers b and ends
    first. Both weigh 30: a tie of weight and count, which a (index 3) must win. If trace 3
    happened to end first, a wins all the same: the test fails only when finish order breaks
    the tie."""
    fake = FakeBackend(
        {
            0: Script(conf=10.0, n=8, answer="x"),
            1: Script(conf=20.0, n=8, answer="c"),
            2: Script(conf=20.0, n=8, answer="d"),
            3: Script(conf=30.0, n=8, answer="a", delay=0.02),
            4: Script(conf=30.0, n=8, answer="b"),
        }
    )
    cfg = make_config(variant="low", warmup=3, budget=5, concurrency=2)
    result = await DeepConf(fake, cfg).solve("q")
    assert [(v.answer, v.count) for v in result.votes] == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert result.answer == "a"


# --- pinned by mutation testing (.ci/mutation) ---------------------------------------------------
# Each test below failed on a mutant of deepconf/online.py that every test above let through.


async def test_the_vote_weighs_each_voter_as_the_policy_says() -> None:
    """Under the majority policy every voter weighs 1, not its lowest-group confidence (12):
    the votes, the methods (exactly DeepConf's and majority's) and majority's rows say so."""
    scripts = {i: Script(conf=12.0, answer=a) for i, a in enumerate(["7", "7", "3"])}
    cfg = make_config(warmup=3, budget=3, concurrency=1, policy="majority")
    result = await DeepConf(FakeBackend(scripts), cfg).solve("q")
    assert [(v.answer, v.count, v.weight) for v in result.votes] == [("7", 2, 2.0), ("3", 1, 1.0)]
    assert result.methods == {"deepconf": "7", "majority": "7"}
    assert [(v.answer, v.count) for v in result.majority_votes] == [("7", 2), ("3", 1)]


async def test_an_empty_online_vote_falls_back_to_majority_and_says_why() -> None:
    """Only the confident warm-up trace passes DeepConf-low's threshold, and it wrote no
    answer: the vote is empty, so plain majority over the finished traces answers, and the
    fallback sentence says so."""
    scripts = {0: Script(conf=10.0, answer="7"), 1: Script(conf=10.0, answer="7")}
    scripts[2] = Script(conf=18.0, answer=None)
    cfg = make_config(variant="low", warmup=3, budget=3, concurrency=1)
    result = await DeepConf(FakeBackend(scripts), cfg).solve("q")
    assert result.answer == "7" and result.methods == {"deepconf": None, "majority": "7"}
    assert result.fallback == (
        "No trace passed the confidence threshold with an answer, so the answer is plain"
        " majority over the 3 traces that ran to completion."
    )


async def test_a_token_budget_spent_inside_the_warm_up_leaves_no_vote_and_says_so() -> None:
    """Two warm-up traces of 20 tokens each in flight, token budget 30: both are cancelled
    before either ends, so there is no threshold and no vote; the result still names the
    policy, has both methods (empty), and a fallback sentence saying there was no answer."""
    fake = FakeBackend(default=lambda i: Script(conf=15.0, n=20, answer="7"))
    cfg = make_config(warmup=2, budget=4, token_budget=30, concurrency=2)
    result = await DeepConf(fake, cfg).solve("q")
    assert result.stop_reason == "token_budget" and result.threshold is None
    assert [t.status for t in result.traces] == [TraceStatus.CANCELLED] * 2
    assert result.answer is None and result.methods == {"deepconf": None, "majority": None}
    assert result.fallback == (
        "No trace passed the confidence threshold with an answer, and no trace that ran to"
        " completion gave an answer."
    )
    assert result.policy is not None and result.policy["name"] == "deepconf-low"


async def test_every_vote_of_a_solve_keys_answers_with_the_solves_own_answer_keys() -> None:
    """A solve's answer keys carry its symbolic-comparison budget: once it is spent, 0.5 and
    1/2 stay apart for the whole solve. The warm-up's provisional majority (in the progress
    snapshots) and the weighted vote both use those keys, so they agree with the policy's
    view; a fresh AnswerKeys per vote would judge 0.5 == 1/2 again and merge them."""
    answers = ["0.5", "1/2", "0.5"]
    fake = FakeBackend(default=lambda i: Script(conf=15.0, n=8, answer=answers[i % 3]))
    betas: list[float] = []
    run = SolveRun(
        fake, make_config(budget=3, warmup=3), "q", on_progress=lambda p: betas.append(p.beta)
    )
    run.keys = AnswerKeys(symbolic_budget=0.0)  # spent: plain-text comparison only
    result = await run.run()
    assert [(v.answer, v.count) for v in result.votes] == [("0.5", 2), ("1/2", 1)]
    assert result.unjudged_answers == 2
    assert 0.5 in betas  # after 0.5 and 1/2: two answers, where merged ones would be 1.0
