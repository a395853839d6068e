"""The scheduler: which proposer makes a generation, and who takes over when it cannot.

It owns the weights, each proposer's availability and the fallback; proposers know nothing of each
other. ``pick`` draws among the available proposers with positive weight (a generator seeded by the
run seed and the generation, so a resumed run draws the same); ``chain`` is the order in which they are
asked until one returns proposals (a dead LLM endpoint hands its generation to GP).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from discovery.proposers import ArchiveView, Proposer

FALLBACK = "gp"


class Scheduler:
    def __init__(self, weights: Mapping[str, float], proposers: Mapping[str, Proposer], fallback: str = FALLBACK):
        self.weights, self.proposers, self.fallback = dict(weights), proposers, fallback

    def available(self, states: Mapping[str, Any], view: ArchiveView) -> dict[str, float]:
        return {n: w for n, w in self.weights.items()
                if w > 0 and not self.proposers[n].unavailable(states[n], view)}

    def pick(self, states: Mapping[str, Any], view: ArchiveView, rng: np.random.Generator) -> str:
        weights = self.available(states, view)
        if not weights:
            return self.fallback
        names = sorted(weights)
        p = np.array([weights[n] for n in names], float)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    def chain(self, name: str) -> list[str]:
        return [name] if name == self.fallback else [name, self.fallback]
