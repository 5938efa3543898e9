"""Endpoint choice, health and retry pacing (backends/routing.py): pure, on a fake clock.

The scheduling and ejection story is told in tests/backends/test_stream_integrity.py; these
tests pin the details mutation testing (.ci/mutation) found loose: round-robin order among
equals, the `avoid` rule, the cooldown boundary, what a success resets, the summary, and the
backoff arithmetic. Weights per endpoint (`URL#3`): the exact split, in-flight streams in
proportion, an ejected endpoint's share going to the others, and the suffix's parsing.
"""

from __future__ import annotations

from collections import Counter

import pytest

from deepconf.backends.routing import (
    COOLDOWN_S,
    EJECT_AFTER,
    EndpointPool,
    parse_retry_after,
    retry_delay,
    split_weight,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def eject(pool: EndpointPool, url: str) -> float | None:
    """Fail `url` EJECT_AFTER times in a row; the cooldown of the ejection."""
    return [pool.failed(url, "connect error", ejects=True) for _ in range(EJECT_AFTER)][-1]


def one_at_a_time(pool: EndpointPool, n: int) -> list[str]:
    """The URLs of n traces run one after another (concurrency 1: each released at once)."""
    picks = []
    for _ in range(n):
        picks.append(pool.acquire())
        pool.release(picks[-1])
    return picks


class FixedJitter:
    """A random.Random stand-in whose uniform(a, b) returns the value given, recording (a, b)."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return self.value


# --- EndpointPool ----------------------------------------------------------------------------


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        EndpointPool([])
    assert str(info.value) == "an endpoint pool needs at least one base URL"


def test_in_flight_counts_one_per_acquire_and_release() -> None:
    """A new pool has nothing in flight; each acquire counts one stream, each release
    returns it (the HTTP backend's `busy > 1` hint reads this sum)."""
    pool = EndpointPool(["a", "b"])
    assert (pool.busy, pool.in_flight) == (0, {"a": 0, "b": 0})
    first, second = pool.acquire(), pool.acquire()
    assert (first, second, pool.busy) == ("a", "b", 2)
    assert pool.in_flight == {"a": 1, "b": 1}
    pool.release(first)
    pool.release(second)
    assert (pool.busy, pool.in_flight) == (0, {"a": 0, "b": 0})


def test_ties_go_forward_from_the_last_pick() -> None:
    """The scan for the least loaded starts after the last pick and goes forward, so among
    equals the next in order wins: after picking c (a busy, b and c idle again) the scan
    runs a, b, c and picks b, not c."""
    pool = EndpointPool(["a", "b", "c"])
    assert [pool.acquire() for _ in range(3)] == ["a", "b", "c"]
    pool.release("b")
    pool.release("c")  # in flight: a 1, b 0, c 0; the scan starts at a
    assert pool.acquire() == "b"


def test_avoid_skips_the_failed_endpoint_when_another_is_healthy() -> None:
    """A retry avoids the endpoint that just failed, even when it is the least loaded; with
    one endpoint there is nowhere else to go."""
    pool = EndpointPool(["a", "b"])
    assert pool.acquire(avoid="a") == "b"
    pool.release("b")
    assert EndpointPool(["a"]).acquire(avoid="a") == "a"


def test_an_endpoint_is_back_the_moment_its_cooldown_ends() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    assert eject(pool, "a") == COOLDOWN_S
    clock.now = COOLDOWN_S - 1e-3
    assert {pool.acquire() for _ in range(3)} == {"b"}
    clock.now = COOLDOWN_S  # until <= now: healthy again
    assert "a" in {pool.acquire() for _ in range(3)}


def test_with_every_endpoint_out_the_one_due_back_first_is_used_whatever_its_name() -> None:
    """Not the first URL, nor the smallest string: the one whose cooldown ends first."""
    pool = EndpointPool(["z", "a"], clock=Clock())
    eject(pool, "a")  # out for COOLDOWN_S
    eject(pool, "z")
    eject(pool, "z")  # out for 2 * COOLDOWN_S
    assert pool.acquire() == "a"
    pool = EndpointPool(["z", "a"], clock=Clock())
    eject(pool, "z")
    eject(pool, "a")
    eject(pool, "a")
    assert pool.acquire() == "z"


def test_a_success_resets_the_streak_and_brings_the_endpoint_back_at_once() -> None:
    """A first token from an ejected endpoint (a stream that started before its ejection)
    puts it back in the rotation now, and the next ejection again needs EJECT_AFTER
    failures in a row."""
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    eject(pool, "a")
    pool.succeeded("a")
    assert "a" in {pool.acquire() for _ in range(3)}  # the clock has not moved
    for _ in range(EJECT_AFTER - 1):
        assert pool.failed("a", "connect error", ejects=True) is None
    assert pool.failed("a", "connect error", ejects=True) == 2 * COOLDOWN_S


def test_summary_has_one_line_per_failed_endpoint_with_kinds_by_count() -> None:
    pool = EndpointPool(["a", "b", "c"])
    for kind in ("server error (5xx)", "connect error", "connect error"):
        pool.failed("b", kind, ejects=False)
    pool.failed("c", "rate limited (429)", ejects=False)
    assert pool.summary() == [
        "b: 3 failed request(s) (connect error 2, server error (5xx) 1)",
        "c: 1 failed request(s) (rate limited (429) 1)",
    ]


# --- weights ---------------------------------------------------------------------------------


def test_weights_3_to_1_split_every_4_traces_exactly_3_and_1() -> None:
    """One trace at a time (nothing in flight to compare), the least served per weight goes
    next: every prefix of 4k traces holds exactly 3k for a and k for b, interleaved (a, b,
    a, a, ...), not 3k a's in a row."""
    picks = one_at_a_time(EndpointPool(["a", "b"], weights=[3, 1]), 400)
    for k in range(1, 101):
        assert Counter(picks[: 4 * k]) == {"a": 3 * k, "b": k}
    assert picks[:8] == ["a", "b", "a", "a", "b", "a", "a", "a"]


def test_fractional_weights_split_as_their_ratio() -> None:
    """0.1 : 0.2 : 0.3 is 1 : 2 : 3 exactly (the pool compares fractions, so binary
    rounding of 0.1 cannot break a tie the wrong way)."""
    picks = one_at_a_time(EndpointPool(["a", "b", "c"], weights=[0.1, 0.2, 0.3]), 60)
    assert Counter(picks) == {"a": 10, "b": 20, "c": 30}


def test_streams_in_flight_follow_the_weights() -> None:
    """Traces that stay in flight fill the endpoints in proportion to their weights: a
    weight is how many streams an endpoint holds for one elsewhere."""
    pool = EndpointPool(["a", "b"], weights=[3, 1])
    for _ in range(8):
        pool.acquire()
    assert pool.in_flight == {"a": 6, "b": 2}
    pool.release("a")
    pool.release("a")  # a holds 4 for b's 2: below its share, so it gets the next two
    assert [pool.acquire(), pool.acquire()] == ["a", "a"]


def test_an_ejected_endpoints_share_goes_to_the_others_and_returns_without_a_burst() -> None:
    """Weights 2:1:1 with a out: b and c split its traces evenly. When a is back it takes
    its half again at once, interleaved: the traces it missed are not owed to it (else it
    would take the next 40 in a row to catch up)."""
    clock = Clock()
    pool = EndpointPool(["a", "b", "c"], weights=[2, 1, 1], clock=clock)
    assert Counter(one_at_a_time(pool, 8)) == {"a": 4, "b": 2, "c": 2}
    eject(pool, "a")
    assert Counter(one_at_a_time(pool, 40)) == {"b": 20, "c": 20}
    clock.now = COOLDOWN_S
    back = one_at_a_time(pool, 40)
    assert Counter(back) == {"a": 20, "b": 10, "c": 10}
    assert back[:4] == ["a", "a", "b", "c"]


def test_a_pool_refuses_bad_weights_and_a_url_twice() -> None:
    for weights in ([1.0], [1.0, 0.0], [1.0, -2.0], [1.0, float("inf")]):
        with pytest.raises(ValueError) as info:
            EndpointPool(["a", "b"], weights=weights)
        assert str(info.value) == f"one positive weight per base URL, got {weights} for ['a', 'b']"
    with pytest.raises(ValueError) as info:
        EndpointPool(["a", "a"])
    assert str(info.value) == "an endpoint pool takes each base URL once, got ['a', 'a']"


def test_split_weight_reads_the_suffix_and_defaults_to_one() -> None:
    assert split_weight("http://a:8000/v1#3") == ("http://a:8000/v1", 3.0)
    assert split_weight("http://a:8000/v1#0.25") == ("http://a:8000/v1", 0.25)
    assert split_weight("http://a:8000/v1") == ("http://a:8000/v1", 1.0)


@pytest.mark.parametrize("suffix", ["0", "-1", "abc", "", "inf", "nan"])
def test_a_bad_weight_says_what_to_write(suffix: str) -> None:
    with pytest.raises(ValueError) as info:
        split_weight(f"http://a:8000/v1#{suffix}")
    assert str(info.value) == (
        f"bad weight '#{suffix}' in 'http://a:8000/v1#{suffix}': write URL#N with N a positive"
        " number, e.g. http://a:8000/v1#3 for three times the traces of a URL without one"
        " (weight 1)"
    )


# --- retry pacing ------------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_up_to_thirty_times_the_jitter() -> None:
    """Defaults: 0.5 s, doubling per attempt, capped at 30 s, then multiplied by a jitter
    factor drawn from [0.5, 1.5)."""
    low, high = FixedJitter(0.5), FixedJitter(1.5)
    assert [retry_delay(a, rng=low) for a in range(3)] == [0.25, 0.5, 1.0]
    assert [retry_delay(a, rng=high) for a in range(3)] == [0.75, 1.5, 3.0]
    assert retry_delay(10, rng=low) == 15.0  # 0.5 * 1024 capped at 30, times 0.5
    assert set(low.asked) == {(0.5, 1.5)}


def test_retry_after_wins_is_capped_and_zero_means_now() -> None:
    jitter = FixedJitter(1.0)
    assert retry_delay(5, 2.5, rng=jitter) == 2.5
    assert retry_delay(5, 0.0, rng=jitter) == 0.0  # the server says: retry now
    assert retry_delay(0, 3600.0, rng=jitter) == 30.0
    assert retry_delay(0, -1.0, rng=jitter) == 0.5  # nonsense: back off as usual
    assert jitter.asked == [(0.5, 1.5)]  # only the last call drew a jitter


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        (" 2.5 ", 2.5),
        ("-3", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    """Seconds, zero included; a negative value or an HTTP date is no advice (None)."""
    assert parse_retry_after(header) == seconds


def test_an_endpoint_ejected_while_ahead_keeps_its_lead() -> None:
    """Only an endpoint that fell behind while out is moved up to the rotation: one that
    was ahead when ejected (a took traces while b held a long one) is not moved back, so
    on its return b catches up first."""
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    assert pool.acquire() == "a"
    pool.release("a")
    assert pool.acquire() == "b"  # held: a takes the next ones
    assert one_at_a_time(pool, 4) == ["a"] * 4  # a has served 5, b 1
    pool.release("b")
    eject(pool, "a")
    assert one_at_a_time(pool, 2) == ["b", "b"]  # b: 3
    clock.now = COOLDOWN_S
    assert one_at_a_time(pool, 6) == ["b", "b", "a", "b", "a", "b"]


def test_split_weight_reads_the_weight_after_the_last_hash() -> None:
    """A '#' before the weight stays in the URL (httpx drops a fragment before sending)."""
    assert split_weight("http://a:8000/v1#x#3") == ("http://a:8000/v1#x", 3.0)
