"""Endpoint choice, health and retry pacing for the HTTP backend. No I/O.

`EndpointPool` sends each new trace to the endpoint with the fewest streams in flight
(ties go round-robin), so several replicas of a server share the load without a router in
front. An endpoint that fails `EJECT_AFTER` times in a row (connect errors, 5xx) leaves the
rotation for a cooldown that doubles with each ejection; when the cooldown ends, the next
trace sent there is its probe: one success brings it back, one failure sends it out again.
While every endpoint is out, the one due back first is used, so a solve never blocks on
health. Retries are counted per endpoint and summarised in one line each (`summary()`)
instead of one log line per retry. `retry_delay` is exponential backoff with jitter that
honours a server's Retry-After. Nothing here knows about HTTP.

    pool = EndpointPool(["http://a:8000/v1", "http://b:8000/v1"])
    url = pool.acquire()            # least in flight among the healthy
    try: ...; pool.succeeded(url)   # the first token arrived
    except ...: pool.failed(url, "connect error", ejects=True)
    finally: pool.release(url)
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# Failures in a row that take an endpoint out of the rotation, and its first cooldown.
EJECT_AFTER = 3
COOLDOWN_S = 5.0
COOLDOWN_CAP_S = 120.0


@dataclass(slots=True)
class _Health:
    streak: int = 0  # failures since the last success
    until: float = 0.0  # out of the rotation until this clock time
    ejections: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by kind, for the summary


class EndpointPool:
    """Least-in-flight choice among the healthy base URLs; see the module docstring."""

    __slots__ = ("_clock", "_health", "_next", "in_flight", "urls")

    def __init__(self, urls: list[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one base URL")
        self.urls = list(urls)
        self.in_flight = dict.fromkeys(self.urls, 0)
        self._health = {url: _Health() for url in self.urls}
        self._clock = clock
        self._next = 0  # where the tie-breaking scan starts: round-robin among equals

    def acquire(self, avoid: str | None = None) -> str:
        """The least-loaded healthy URL (other than `avoid`, when another exists), now
        counted busy. With every URL out of the rotation: the one due back first."""
        now = self._clock()
        healthy = [u for u in self.urls if self._health[u].until <= now]
        if not healthy:
            healthy = [min(self.urls, key=lambda u: self._health[u].until)]
        n = len(self.urls)
        best: str | None = None
        for i in range(n):
            url = self.urls[(self._next + i) % n]
            if url not in healthy or (url == avoid and len(healthy) > 1):
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

    @property
    def busy(self) -> int:
        """Streams in flight over every endpoint."""
        return sum(self.in_flight.values())

    def succeeded(self, url: str) -> None:
        """A stream from `url` delivered its first token: it is healthy."""
        health = self._health[url]
        health.streak, health.until = 0, 0.0

    def failed(self, url: str, kind: str, *, ejects: bool) -> float | None:
        """Count one failure of `kind` ("connect error", "HTTP 503", "rate limited", ...).
        `ejects`: the kind says the endpoint is unwell (not just busy). Returns the cooldown
        when this failure took the endpoint out of the rotation, else None."""
        health = self._health[url]
        health.failures[kind] += 1
        if not ejects:
            return None
        health.streak += 1
        if health.streak < EJECT_AFTER:
            return None
        cooldown = min(COOLDOWN_S * 2**health.ejections, COOLDOWN_CAP_S)
        health.ejections += 1
        health.until = self._clock() + cooldown
        return cooldown

    def summary(self) -> list[str]:
        """One line per endpoint that failed at all: its failures by kind and ejections."""
        lines = []
        for url in self.urls:
            health = self._health[url]
            if not health.failures:
                continue
            kinds = ", ".join(f"{kind} {n}" for kind, n in health.failures.most_common())
            total = sum(health.failures.values())
            line = f"{url}: {total} failed request(s) ({kinds})"
            if health.ejections:
                line += f"; left the rotation {health.ejections} time(s)"
            lines.append(line)
        return lines


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
