"""Fitness of objectives for the search: the suite's one scoring function on the search's combos.

Each (task, dataset) of the fitness is a ``Combo`` of the suite (its task's dataset settings unless
overridden). A batch of objectives is trained ``batch`` at a time (padded: fixed shapes, so a search
never recompiles) from each pi_ref seed with each training seed, and scored in one batched rollout.

Search fitness uses the validation dataset seed and the search protocol; ``fresh`` re-evaluation
uses the TEST dataset seed, new pi_ref and training seeds and new episodes (``evaluators.protocol``).
Fitness = mean normalised score over (task, dataset) combos, units and episodes; its CI is a
Student-t interval over units (each unit's score averaged over combos and episodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from evaluators.datasets import DatasetConfig, parse_variant
from evaluators.po_trainer import TrainConfig
from evaluators.protocol import FRESH, SEARCH, TEST_DATA_SEED, VALIDATION_DATA_SEED, Combo, Protocol, Setting, \
    score_settings
from evaluators.reference import BCConfig
from evaluators.scoring import BACKENDS, mean_ci95
from evaluators.suite import task_suite


@dataclass(frozen=True)
class FitnessConfig:
    tasks: tuple[str, ...] = ("halfcheetah",)
    datasets: tuple[str, ...] = ("noisy:0.2",)
    seeds: int = 2  # training seeds per pi_ref seed
    episodes: int = 2
    reference_seeds: int = 1
    dataset: DatasetConfig | None = None  # None: each task's suite dataset
    train: TrainConfig = TrainConfig(steps=300, lr=1e-3)
    reference: BCConfig | None = None  # None: each task's suite BC settings
    backend: str = "native"
    batch: int = 8  # candidates per population call (padded)

    def validate(self):
        for t in self.tasks:
            task_suite(t)
        for d in self.datasets:
            parse_variant(d)
        if self.dataset is not None:
            self.dataset.validate()
        if self.reference is not None:
            self.reference.validate()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}")
        if self.seeds < 1 or self.episodes < 1 or self.batch < 1 or self.reference_seeds < 1:
            raise ValueError("seeds, episodes, reference seeds and batch must be >= 1")

    def protocol(self, fresh: bool, seeds: int | None = None) -> Protocol:
        """Search: ``reference_seeds`` x ``seeds``. Fresh: ``seeds`` new pi_ref seeds x one new training seed."""
        n = seeds or self.seeds
        if fresh:
            return replace(FRESH, reference_seeds=tuple(range(n)), episodes=max(self.episodes, FRESH.episodes))
        return replace(SEARCH, reference_seeds=tuple(range(self.reference_seeds)), train_seeds=tuple(range(n)),
                       episodes=self.episodes)


@dataclass
class Evaluation:
    fitness: float | None
    ci95: float | None
    scores: list[dict] = field(default_factory=list)  # one per (task, dataset, unit)
    failure: str = ""  # why training stopped, when it did


class FitnessEvaluator:
    def __init__(self, cfg: FitnessConfig, cache: str | None = None, on_event=None):
        cfg.validate()
        self.cfg = cfg
        self.cache = cache
        self.on_event = on_event
        self._combos: dict[tuple[bool, int | None], list[Combo]] = {}

    def combos(self, fresh: bool = False, seeds: int | None = None) -> list[Combo]:
        """The prepared (task, dataset) combos, built (or read from cache) on first use."""
        key = (fresh, seeds)
        if key not in self._combos:
            protocol = self.cfg.protocol(fresh, seeds)
            self._combos[key] = [
                Combo(t, d, TEST_DATA_SEED if fresh else VALIDATION_DATA_SEED,
                      self.cfg.dataset or task_suite(t).dataset, protocol, self.cfg.reference or task_suite(t).reference,
                      self.cache,
                      on_event=self.on_event)
                for t in self.cfg.tasks for d in self.cfg.datasets]
        return self._combos[key]

    def evaluate(self, objectives: list, fresh: bool = False, seeds: int | None = None) -> list[Evaluation]:
        """Fitness of each objective. ``fresh``: a new dataset seed, training seeds and episodes."""
        n = len(objectives)
        settings = [Setting(str(i), o, self.cfg.train.lr, self.cfg.train.steps) for i, o in enumerate(objectives)]
        combos = self.combos(fresh, seeds)
        per_unit = np.zeros((n, len(combos[0].protocol.units)))
        scores = [[] for _ in range(n)]
        failures = [""] * n
        for combo in combos:
            table = score_settings(combo, settings, self.cfg.train, policy_rows=("pi_ref",), batch=self.cfg.batch,
                                   backend=self.cfg.backend)
            for i, s in enumerate(settings):
                per_unit[i] += table.unit_scores(s.label) / len(combos)
                if s.label in table.failures and not failures[i]:
                    failures[i] = f"{table.failures[s.label]} ({combo.name})"
                row = table.index(s.label)
                for u, (ref_seed, train_seed) in enumerate(table.units):
                    scores[i].append({"task": combo.task.name, "dataset": combo.variant.spec, "seed": train_seed,
                                      "reference_seed": ref_seed, "score": float(table.scores[row, u].mean()),
                                      "returns": table.returns[row, u].tolist(),
                                      "ranking_accuracy": float(table.ranking[row, u]),
                                      "stop_reason": table.failures.get(s.label, "")})
        out = []
        for i in range(n):
            if failures[i]:
                out.append(Evaluation(None, None, scores[i], failures[i]))
                continue
            mean, ci = mean_ci95(per_unit[i])
            out.append(Evaluation(float(mean), float(ci), scores[i]))
        return out
