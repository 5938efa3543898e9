"""Endpoint choice and retry pacing for the HTTP backend. No I/O.

`EndpointPool` sends each new trace to the endpoint with the fewest streams in flight
(ties go round-robin), so several replicas of a server share the load without a router in
front. `retry_delay` is exponential backoff with jitter that honours a server's
Retry-After. Neither knows about HTTP.

    pool = EndpointPool(["http://a:8000/v1", "http://b:8000/v1"])
    url = pool.acquire()            # least in flight
    try: ...
    finally: pool.release(url)
"""

from __future__ import annotations

import random


class EndpointPool:
    """Least-in-flight choice among base URLs."""

    __slots__ = ("_next", "in_flight", "urls")

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one base URL")
        self.urls = list(urls)
        self.in_flight = dict.fromkeys(self.urls, 0)
        self._next = 0  # where the tie-breaking scan starts: round-robin among equals

    def acquire(self, avoid: str | None = None) -> str:
        """The least-loaded URL (other than `avoid`, when another exists), now counted busy."""
        n = len(self.urls)
        best: str | None = None
        for i in range(n):
            url = self.urls[(self._next + i) % n]
            if url == avoid and n > 1:
                continue
            if best is None or self.in_flight[url] < self.in_flight[best]:
                best = url
        assert best is not None
        self._next = (self.urls.index(best) + 1) % n
        self.in_flight[best] += 1
        return best

    def release(self, url: str) -> None:
        self.in_flight[url] -= 1
        assert self.in_flight[url] >= 0, f"released {url} more often than acquired"


def retry_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    A server's Retry-After wins (it knows its own load; capped at `cap` so a bad header
    cannot stall a solve). Otherwise base * 2**attempt, capped, times a jitter factor in
    [0.5, 1.5) so many traces that failed together do not retry in lockstep.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap)
    jitter = (rng or random).uniform(0.5, 1.5)
    return min(base * 2**attempt, cap) * jitter


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; None for a missing or an HTTP-date header (rarely used by APIs)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
