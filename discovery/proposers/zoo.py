"""Generation 0: the published baselines (the seeds of GP and the yardstick of every report)."""

from __future__ import annotations

from archive.store import BASELINE_ORIGIN
from discovery.proposers.base import ArchiveView, Asked, Proposed, Proposer
from grammar.zoo import ZOO


class ZooProposer(Proposer):
    """The configured baselines (the whole zoo when none is named), checked as published and trained on
    every seed; not scheduled: the search asks it for generation 0 only."""

    name = BASELINE_ORIGIN
    raced = False
    published = True

    def ask(self, state, view: ArchiveView, rng) -> Asked:
        names = self.cfg.baselines or tuple(ZOO)
        return Asked([Proposed(ZOO[n].objective, BASELINE_ORIGIN) for n in names], state)
