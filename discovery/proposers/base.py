"""What every proposer is: an emitter that asks for objectives and is told how they fared.

A proposer holds its settings only; everything that changes from one generation to the next is its
*state*, a small JSON value that the search stores under ``proposer:<name>`` in the same transaction as
the generation, so a killed run resumes exactly (evosax's ``init/ask/tell`` with explicit state).

    state = proposer.initial_state()
    asked = proposer.ask(state, view, rng)          # proposals + the state after asking
    ...screen, train...
    state = proposer.tell(asked.state, results)     # one Evaluation (or None: rejected) per proposal

``view`` is read-only access to the run (`ArchiveView`); ``rng`` is the generation's generator.
A new proposer is one module with a subclass of `Proposer` decorated with `register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from grammar.identity import Identity, identify
from grammar.objective import Objective

if TYPE_CHECKING:
    from archive.qd import HallOfFame, QDArchive
    from archive.store import ArchiveStore, CandidateRecord
    from discovery.search import SearchConfig
    from evaluators.fitness import Evaluation

REGISTRY: dict[str, type[Proposer]] = {}


def register(cls: type[Proposer]) -> type[Proposer]:
    """Class decorator: make ``cls`` available to the scheduler under ``cls.name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"a proposer named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class Proposed:
    """One objective a proposer asks to be evaluated."""

    objective: Objective
    origin: str  # stored with the candidate: the proposer's name, then ":" and what made it
    parents: list[int] = field(default_factory=list)
    from_llm: bool = False  # linked to the generation's LLM exchange

    @cached_property
    def identity(self) -> Identity:
        """Computed once, carried through screening into the archive."""
        return identify(self.objective)


@dataclass
class Asked:
    """A proposer's answer to ``ask``."""

    proposals: list[Proposed]
    state: Any  # JSON value: the proposer's state after asking
    note: str = ""  # for the live view
    exchange: Any = None  # an LLM exchange (discovery.llm.Exchange) stored with the generation


@dataclass
class ArchiveView:
    """What a proposer may read of the run: the archive, its elites, the budget and the settings."""

    store: ArchiveStore
    run_id: int
    cfg: SearchConfig
    qd: QDArchive
    hall: HallOfFame
    generation: int
    room: int  # candidates this generation may train (the batch, or what the budget has left)
    evaluations_left: int | None  # what the evaluation budget has left (None: no such budget)

    def parents(self) -> list[CandidateRecord]:
        """The QD elites and the hall of fame's front, by id."""
        ids = {e.candidate_id for e in self.qd.elites()} | {e.candidate_id for e in self.hall.front()}
        return [self.store.candidate(i) for i in sorted(ids)]

    def candidate(self, candidate_id: int) -> CandidateRecord:
        return self.store.candidate(candidate_id)

    def by_fitness(self, limit: int | None = None, **filters) -> list[CandidateRecord]:
        """Evaluated candidates, fittest first."""
        return self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True,
                                     limit=limit, **filters)


class Proposer:
    """Base of every proposer: settings in the object, state passed through ``ask`` and ``tell``."""

    name: ClassVar[str]
    raced: ClassVar[bool] = True  # False: every proposal is trained on all seeds (the yardsticks)
    published: ClassVar[bool] = False  # True: proposals are checked as published, not as searched losses

    def __init__(self, cfg: SearchConfig, **resources):
        self.cfg = cfg

    def initial_state(self) -> Any:
        return {}

    def unavailable(self, state: Any, view: ArchiveView) -> str:
        """Why the proposer cannot propose now ('' when it can)."""
        return ""

    def ask(self, state: Any, view: ArchiveView, rng: np.random.Generator) -> Asked:
        raise NotImplementedError

    def tell(self, state: Any, results: list[Evaluation | None]) -> Any:
        return state

    def close(self) -> None:
        """Release what the proposer holds (a client, a connection)."""
