"""Evolution strategies: a campaign of `ESConfig.generations` steps over the constants of one promising
structure (`discovery.es.ConstantSearch`), the whole ES population trained in one population call.

State (JSON): the campaign's ``root`` candidate and ``step``, the structure hashes already ``tuned``, and
the evosax ``strategy`` state (safetensors bytes, base64).
"""

from __future__ import annotations

import base64

import numpy as np

from discovery.es import ConstantSearch
from discovery.proposers.base import ArchiveView, Asked, Proposed, Proposer, register

ROOT_WINDOW = 50  # fittest candidates searched for a structure with free constants


@register
class ESProposer(Proposer):
    name = "es"

    def __init__(self, cfg, **resources):
        super().__init__(cfg)
        self._search: ConstantSearch | None = None  # between ask and tell of one generation

    def initial_state(self) -> dict:
        return {"root": None, "step": 0, "tuned": [], "strategy": None}

    def _in_campaign(self, state: dict) -> bool:
        return state["root"] is not None and state["step"] < self.cfg.es.generations

    def _root(self, state: dict, view: ArchiveView) -> dict | None:
        """The fittest evaluated candidate with free constants whose structure ES has not tuned yet."""
        tuned = set(state["tuned"])
        return next((c for c in view.by_fitness(limit=ROOT_WINDOW)
                     if c["objective"].constants and c["structure_hash"] not in tuned), None)

    def unavailable(self, state: dict, view: ArchiveView) -> str:
        left = view.evaluations_left
        if left is not None and left < self.cfg.es.population:
            return "the evaluation budget has less left than an ES population"
        if not self._in_campaign(state) and self._root(state, view) is None:
            return "no untuned structure with free constants"
        return ""

    def ask(self, state: dict, view: ArchiveView, rng: np.random.Generator) -> Asked:
        if not self._in_campaign(state):
            root = self._root(state, view)
            state = {"root": root["id"], "step": 0, "tuned": state["tuned"] + [root["structure_hash"]],
                     "strategy": None}
        root = view.candidate(state["root"])
        self._search = ConstantSearch(root["objective"].replace(name=f"es{root['id']}"), self.cfg.es,
                                      seed=int(rng.integers(2**31)))
        if state["step"] > 0:
            self._search.load_state_bytes(base64.b64decode(state["strategy"]))
        g = view.generation
        population = [Proposed(o.replace(name=f"g{g}_{i}"), f"es:{self.cfg.es.strategy}", [root["id"]])
                      for i, o in enumerate(self._search.ask(tag=f"g{g}_"))]
        return Asked(population, state, f"ES on #{root['id']} step {state['step'] + 1}")

    def tell(self, state: dict, results) -> dict:
        """Each member's fitness on the first racing rung (the same seeds for all); rejected or failed
        members rank last."""
        self._search.tell([None if ev is None else ev.first_rung_fitness() for ev in results])
        strategy = base64.b64encode(self._search.state_bytes()).decode("ascii")
        self._search = None
        return {**state, "step": state["step"] + 1, "strategy": strategy}
