"""Screening: every proposal of a generation, from any proposer, through the same steps before training.

Steps, in order (the first that objects rejects the proposal with its reason): a new form (not a
`dedupe_key` seen in the run or earlier in the generation), a valid loss (`grammar.validity.check`: as
published for baselines; monotone in the preferences unless the run allows otherwise, and able to use
the labels, for proposals), its QD descriptors, and a new behaviour (gradient fingerprint on probe data).
"""

from __future__ import annotations

from dataclasses import dataclass

from archive.descriptors import DescriptorError, describe
from archive.store import ArchiveStore
from discovery.proposers import Proposed
from grammar.validity import check


@dataclass
class Screened:
    proposal: Proposed
    reason: str = ""  # why it is rejected ('' when it may be trained)
    descriptors: dict | None = None
    behaviour: str | None = None


class Screen:
    def __init__(self, store: ArchiveStore, run_id: int, descriptor_names: list[str], allow_non_monotone: bool):
        self.store, self.run_id = store, run_id
        self.descriptor_names, self.allow_non_monotone = descriptor_names, allow_non_monotone

    def __call__(self, proposals: list[Proposed], published: bool = False) -> list[Screened]:
        seen: dict[str, str] = {}  # dedupe key or fingerprint -> name, within this generation
        out = []
        for p in proposals:
            s = Screened(p)
            for step in (self._new_form, self._valid, self._described, self._new_behaviour):
                s.reason = step(s, seen, published)
                if s.reason:
                    s.descriptors = s.behaviour = None
                    break
            out.append(s)
        return out

    def _new_form(self, s: Screened, seen: dict, published: bool) -> str:
        earlier = self.store.seen(self.run_id, s.proposal.identity)
        if earlier is not None:
            return f"duplicate of #{earlier}"
        key = s.proposal.identity.dedupe_key
        if key in seen:
            return f"duplicate of {seen[key]} in the same generation"
        seen[key] = s.proposal.objective.name
        return ""

    def _valid(self, s: Screened, seen: dict, published: bool) -> str:
        objective = s.proposal.objective
        verdict = check(objective) if published else \
            check(objective, monotone=not self.allow_non_monotone, labels=True)
        s.behaviour = verdict.behaviour
        return "" if verdict.ok else verdict.reason

    def _described(self, s: Screened, seen: dict, published: bool) -> str:
        try:
            s.descriptors = describe(s.proposal.objective, self.descriptor_names)
        except DescriptorError as e:
            return f"descriptor: {e}"
        return ""

    def _new_behaviour(self, s: Screened, seen: dict, published: bool) -> str:
        earlier = self.store.seen_behaviour(self.run_id, s.behaviour)
        if earlier is not None:
            return f"duplicate of #{earlier} (same gradients on the probe data)"
        if s.behaviour in seen:
            return f"duplicate of {seen[s.behaviour]} in the same generation (same gradients)"
        seen[s.behaviour] = s.proposal.objective.name
        return ""
