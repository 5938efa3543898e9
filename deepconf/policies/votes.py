"""The running vote a stop rule reads: votes in the order they were cast, summed per class.

A `VoteState` is what every stop rule sees, live and in replay alike. It is built up one
vote at a time (`add`) and sums weights in that order, so its leader and consensus beta are
bit for bit those of deepconf.voting.vote over the same voters (the live result's table).
Not here: who may vote and with what weight (deepconf.policies.run), when to stop
(deepconf.policies.stop).

    state = VoteState()
    state.add("7", 17.2, "7"); state.add("3", 15.0, "3")
    state.leader, state.beta, state.history   # -> "7", 0.534..., ["7", "3"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from deepconf.voting import ranked

__all__ = ["VoteState"]


@dataclass(slots=True)
class _Row:
    weight: float
    count: int
    raw: str  # the first raw answer of the class: the name the vote reports


@dataclass(slots=True)
class VoteState:
    """Votes so far. `history` holds the class key of every vote in casting order (ESC
    reads its tail); rows are kept in first-seen order, the vote's last tie-break."""

    rows: dict[str, _Row] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    run: int = 0  # how many of the latest votes share the last vote's class

    def add(self, key: str, weight: float, raw: str) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = _Row(0.0, 0, raw)
        row.weight += weight
        row.count += 1
        self.run = self.run + 1 if self.history and self.history[-1] == key else 1
        self.history.append(key)
        self.weights.append(weight)

    @property
    def votes(self) -> int:
        return len(self.history)

    def ranking(self) -> list[_Row]:
        """Rows strongest first: deepconf.voting.ranked's rule (weight up to float noise,
        then count, then first seen)."""
        rows = list(self.rows.values())
        return [rows[i] for i in ranked([r.weight for r in rows], [r.count for r in rows])]

    @property
    def leader(self) -> str | None:
        return self.ranking()[0].raw if self.rows else None

    @property
    def total_weight(self) -> float:
        return math.fsum(r.weight for r in self.rows.values())

    @property
    def beta(self) -> float:
        """V(leader) / sum V, 0.0 with no votes or only zero weights (as VoteTable.beta)."""
        total = self.total_weight
        return self.ranking()[0].weight / total if self.rows and total > 0 else 0.0

    def top_two(self) -> tuple[_Row | None, _Row | None]:
        """The leader's and the runner-up's rows (None where there is none)."""
        ranking = self.ranking()
        return (
            ranking[0] if ranking else None,
            ranking[1] if len(ranking) > 1 else None,
        )
