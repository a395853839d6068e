"""Genetic programming: children of the archive's elites (tournament among them) by `discovery.gp.vary`."""

from __future__ import annotations

import numpy as np

from discovery.gp import tournament, vary
from discovery.proposers.base import ArchiveView, Asked, Proposed, Proposer, register

MAX_ATTEMPTS = 6  # x batch: variations tried per generation before giving up on a full batch


@register
class GPProposer(Proposer):
    name = "gp"

    def ask(self, state, view: ArchiveView, rng: np.random.Generator) -> Asked:
        pool = view.parents()
        if not pool:
            return Asked([], state, "GP: no parents yet")
        fitness = np.array([c["fitness"] for c in pool])
        out, keys = [], set()
        for _ in range(MAX_ATTEMPTS * self.cfg.fitness.batch):
            if len(out) >= view.room:
                break
            chosen = [pool[i] for i in tournament(fitness, self.cfg.tournament, 2, rng)]
            try:
                child, op, used = vary([c["objective"] for c in chosen], rng, self.cfg.gp,
                                       f"g{view.generation}_{len(out)}")
            except ValueError:  # GrammarError: no operator produced a child in the language
                continue
            proposed = Proposed(child, f"gp:{op}", [chosen[i]["id"] for i in used])
            if proposed.identity.dedupe_key not in keys:
                keys.add(proposed.identity.dedupe_key)
                out.append(proposed)
        return Asked(out, state)
