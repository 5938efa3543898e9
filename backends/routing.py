"""Endpoint choice, health and retry pacing for the HTTP backend. No I/O.

`EndpointPool` sends each new trace to the endpoint with the fewest streams in flight per
unit of weight, so several replicas of a server share the load without a router in front
and a replica with weight 3 (`http://a:8000/v1#3`, parsed by `split_weight`) holds three
times the streams of one with weight 1. Ties (always, when traces run one at a time) go to
the endpoint with the least weighted service so far, then round-robin: over 4 traces at
weights 3:1 that is exactly 3 and 1. An endpoint that fails `EJECT_AFTER` times in a row
(connect errors, 5xx) leaves the rotation for a cooldown that doubles with each ejection;
when the cooldown ends, the next trace sent there is its probe: one success brings it back,
one failure sends it out again. While it is out, its share goes to the others. While every
endpoint is out, the one due back first is used, so a solve never blocks on health.
Retries are counted per endpoint and summarised in one line each (`summary()`) instead of
one log line per retry. `retry_delay` is exponential backoff with jitter that honours a
server's Retry-After. Nothing here knows about HTTP.

    pool = EndpointPool(["http://a:8000/v1", "http://b:8000/v1"], weights=[3, 1])
    url = pool.acquire()            # least in flight per weight among the healthy
    try: ...; pool.succeeded(url)   # the first token arrived
    except ...: pool.failed(url, "connect error", ejects=True)
    finally: pool.release(url)
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

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


def split_weight(spec: str) -> tuple[str, float]:
    """'http://a:8000/v1#3' -> ('http://a:8000/v1', 3.0); no suffix: weight 1.

    The one parser of the `URL#weight` form every door takes (--base-url, --upstream,
    HttpBackendConfig). A fragment never reaches a server, so no real base URL needs a '#'
    and the suffix cannot be mistaken for part of one. Raises ValueError saying what to
    write for a weight that is not a positive finite number."""
    url, sep, text = spec.rpartition("#")
    if not sep:
        return spec, 1.0
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"bad weight {'#' + text!r} in {spec!r}: write URL#N with N a positive number,"
            f" e.g. {url}#3 for three times the traces of a URL without one (weight 1)"
        )
    return url, weight


class EndpointPool:
    """Least-in-flight-per-weight choice among the healthy base URLs; see the module
    docstring."""

    __slots__ = ("_clock", "_health", "_next", "_served", "_weight", "in_flight", "urls")

    def __init__(
        self,
        urls: Sequence[str],
        *,
        weights: Sequence[float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"an endpoint pool takes each base URL once, got {list(urls)}")
        weights = [1.0] * len(urls) if weights is None else list(weights)
        if len(weights) != len(urls) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"one positive weight per base URL, got {weights} for {list(urls)}")
        self.urls = list(urls)
        self.in_flight = dict.fromkeys(self.urls, 0)
        # Exact fractions: ties (equal load per weight, equal service) must be exact ties,
        # or 3:1 would come out 3:1 only up to float rounding.
        self._weight = {u: Fraction(w) for u, w in zip(self.urls, weights, strict=True)}
        # Traces sent, divided by weight ("pass" in stride scheduling): the lowest is owed one.
        # Unlike nginx's smooth round-robin, only the chosen endpoint's count moves, so among
        # equal weights and loads the order stays plain round-robin.
        self._served = dict.fromkeys(self.urls, Fraction(0))
        self._health = {url: _Health() for url in self.urls}
        self._clock = clock
        self._next = 0  # where the tie-breaking scan starts: round-robin among equals

    def acquire(self, avoid: str | None = None) -> str:
        """The healthy URL (other than `avoid`, when another exists) with the fewest streams
        in flight per weight, then the least served per weight, then the next in order; now
        counted busy. With every URL out of the rotation: the one due back first."""
        now = self._clock()
        healthy = [u for u in self.urls if self._health[u].until <= now]
        if not healthy:
            healthy = [min(self.urls, key=lambda u: self._health[u].until)]
        # An endpoint out of the rotation is not owed the traces it missed: its service
        # moves up with the rotation's, so on its return it takes its share, not a burst.
        floor = min(self._served[u] for u in healthy)
        for url in self.urls:
            if url not in healthy and self._served[url] < floor:
                self._served[url] = floor
        n = len(self.urls)
        best: str | None = None
        for i in range(n):
            url = self.urls[(self._next + i) % n]
            if url not in healthy or (url == avoid and len(healthy) > 1):
                continue
            if best is None or self._owed(url) < self._owed(best):
                best = url
        assert best is not None
        self._next = (self.urls.index(best) + 1) % n
        self.in_flight[best] += 1
        self._served[best] += 1 / self._weight[best]
        return best

    def _owed(self, url: str) -> tuple[Fraction, Fraction]:
        """The sort key of acquire(): load per weight, then service per weight."""
        return self.in_flight[url] / self._weight[url], self._served[url]

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
