"""A language model proposing objectives from the archive's elites, inspirations and recent rejections
(`discovery.llm`). Unavailable without a reachable endpoint or once its call budget is spent; when a
call fails or its answer holds no usable objective, the scheduler's fallback fills the generation."""

from __future__ import annotations

import dataclasses

import numpy as np

from archive.rejections import group_rejections
from discovery.llm import LLMProposer as Client  # the endpoint client, which parses and budgets calls
from discovery.llm import llm_available
from discovery.llm_prompt import PromptContext
from discovery.proposers.base import REGISTRY, ArchiveView, Asked, Proposed, Proposer, register

FEEDBACK_WINDOW = 50  # latest rejections per proposer that the feedback is grouped from
FEEDBACK_KINDS = 3  # kinds of rejection fed back per proposer
PROMPT_ELITES = 5  # fittest candidates shown, and as many QD elites drawn as inspirations


@register
class LLMEmitter(Proposer):
    """The scheduled proposer around the endpoint client (`discovery.llm.LLMProposer`)."""

    name = "llm"

    def __init__(self, cfg, *, llm_client=None, llm_http_client=None, llm_replay=None, exchanges=(), **resources):
        super().__init__(cfg)
        self.client, self.off = None, ""
        given = llm_client is not None or llm_http_client is not None or llm_replay is not None
        ok, why = (True, "") if given else llm_available(cfg.llm)
        if not ok:
            self.off = f"LLM proposer off: {why}"
            return
        # the validity check runs in screening, where a failure becomes a rejected candidate
        self.client = Client(dataclasses.replace(cfg.llm, check_validity=False), client=llm_client,
                             http_client=llm_http_client, replay=llm_replay)
        self.client.restore_budget(exchanges)  # calls and tokens spent before a resume

    def unavailable(self, state, view: ArchiveView) -> str:
        if self.client is None:
            return self.off
        return "the LLM call budget is spent" if self.client.exhausted else ""

    def ask(self, state, view: ArchiveView, rng) -> Asked:
        proposal = self.client.propose(prompt_context(view))
        ex = proposal.exchange
        if ex.answer is None:
            return Asked([], state, f"LLM call failed: {ex.error}", ex)
        g = view.generation
        out = [Proposed(c.objective.replace(name=f"g{g}_{i}"), f"llm:{ex.model}", [], from_llm=True)
               for i, c in enumerate(proposal.candidates[:view.room])]
        return Asked(out, state, f"LLM: {len(out)} proposed, {len(proposal.rejections)} refused in the answer", ex)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def prompt_context(view: ArchiveView) -> PromptContext:
    """The fittest candidates, QD elites drawn as inspirations, recent rejections and the best baseline."""
    evaluated = view.by_fitness()

    def entry(c):
        return {"name": c["objective"].name, "formula": c["objective"], "fitness": c["fitness"],
                "ci": c["ci95"], "descriptors": c["descriptors"]}

    top = {c["id"] for c in evaluated[:PROMPT_ELITES]}
    cells = [view.candidate(e.candidate_id) for e in view.qd.elites() if e.candidate_id not in top]
    rng = np.random.default_rng([view.cfg.seed, view.generation, 1])
    inspirations = [entry(cells[i]) for i in rng.permutation(len(cells))[:PROMPT_ELITES]]
    baseline = view.store.best_baseline(view.run_id)
    fc = view.cfg.fitness
    return PromptContext(task=",".join(fc.tasks), dataset=",".join(fc.datasets),
                         elites=[entry(c) for c in evaluated[:PROMPT_ELITES]], inspirations=inspirations,
                         rejections=feedback(view), n_wanted=view.cfg.llm.n_wanted,
                         best_baseline=(baseline["objective"].name, baseline["fitness"]) if baseline else None,
                         max_complexity=view.cfg.gp.max_complexity)


def feedback(view: ArchiveView) -> list[str]:
    """A few kinds of recent rejection per proposer, each with its count and latest example."""
    rows = view.store.rejections(view.run_id)
    lines = []
    for source in REGISTRY:  # in registration order
        recent = [r for r in rows if r[0] == source][-FEEDBACK_WINDOW:]
        groups = [grp for grp in group_rejections(recent) if source == "llm" or grp.kind != "duplicate"]
        lines += [f"[{source}] {grp.kind}: {grp.count} of the last {len(recent)}; e.g. {grp.snippet} -> "
                  f"{grp.example}" for grp in groups[:FEEDBACK_KINDS]]
    return lines
