"""Fitness of objectives: train from pi_ref on each (task, dataset), score, average.

A batch of objectives is trained in one population call per (task, dataset) and every trained policy
is scored in one batched rollout. Two layouts keep compiled shapes fixed so a search never recompiles:
``candidates`` (different structures, padded to ``batch`` candidates x 1 constant vector) and
``constants`` (ONE structure x ``len(objectives)`` constant vectors, for evolution strategies).

Fitness = mean normalised score over (task, dataset) combos, training seeds and episodes; its CI is
a Student-t interval over seeds (each seed's score averaged over combos and episodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluators.datasets import DatasetConfig, build, parse_variant
from evaluators.po_trainer import STOP_REASONS, TrainConfig, train_population
from evaluators.reference import BCConfig, reference_policy
from evaluators.scoring import episode_returns, mean_ci95, normalise
from evaluators.tasks import get_task

SEARCH_EVAL_SEED = 10_000
FRESH_EVAL_SEED = 20_000
FRESH_TRAIN_SEED = 1_000


@dataclass(frozen=True)
class FitnessConfig:
    tasks: tuple[str, ...] = ("hopper",)
    datasets: tuple[str, ...] = ("noisy:0.2",)
    seeds: int = 2
    episodes: int = 2
    dataset: DatasetConfig = DatasetConfig(n_pairs=1024)
    train: TrainConfig = TrainConfig(steps=100)
    reference: BCConfig = BCConfig()
    backend: str = "native"
    batch: int = 8  # candidates per population call (padded)
    data_seed: int = 0

    def validate(self):
        for t in self.tasks:
            get_task(t)
        for d in self.datasets:
            parse_variant(d)
        self.dataset.validate()
        self.reference.validate()
        if self.backend not in ("native", "mjx"):
            raise ValueError(f"unknown backend {self.backend!r}; use native or mjx")
        if self.seeds < 1 or self.episodes < 1 or self.batch < 1:
            raise ValueError("seeds, episodes and batch must be >= 1")


@dataclass
class Evaluation:
    fitness: float | None
    ci95: float | None
    scores: list[dict] = field(default_factory=list)  # one per (task, dataset, seed)
    failure: str = ""  # why training stopped, when it did


class FitnessEvaluator:
    def __init__(self, cfg: FitnessConfig, cache: str | None = None, on_event=None):
        cfg.validate()
        self.cfg = cfg
        self.cache = cache
        self.on_event = on_event
        self._combos = None

    def combos(self):
        """[(task, dataset, pi_ref)], built (or read from cache) on first use."""
        if self._combos is None:
            self._combos = []
            for task_name in self.cfg.tasks:
                task = get_task(task_name)
                for variant in self.cfg.datasets:
                    if self.on_event:
                        self.on_event(f"preparing {task_name} {variant}: dataset and pi_ref")
                    ds = build(task, variant, self.cfg.data_seed, self.cfg.dataset, self.cache)
                    self._combos.append((task, ds, reference_policy(ds, self.cfg.reference)))
        return self._combos

    def reference_scores(self, fresh: bool = False) -> dict[tuple[str, str], float]:
        """pi_ref's normalised score per (task, dataset) on the search (or fresh) episodes."""
        out = {}
        for task, ds, ref in self.combos():
            r = episode_returns(task, {k: v[None] for k, v in ref.items()}, self._episodes(fresh),
                                FRESH_EVAL_SEED if fresh else SEARCH_EVAL_SEED, backend=self.cfg.backend)
            out[(task.name, ds.variant)] = float(normalise(task, r).mean())
        return out

    def _episodes(self, fresh: bool) -> int:
        return max(self.cfg.episodes, 5) if fresh else self.cfg.episodes

    def evaluate(self, objectives: list, layout: str = "candidates", fresh: bool = False,
                 seeds: int | None = None) -> list[Evaluation]:
        """Fitness of each objective. ``fresh``: training seeds and episodes never used by the search."""
        from grammar.kernel import constant_vector, encode, interpret, stack

        n = len(objectives)
        if layout == "candidates" and n > self.cfg.batch:  # fixed shapes: chunks of `batch`
            return [e for i in range(0, n, self.cfg.batch)
                    for e in self.evaluate(objectives[i:i + self.cfg.batch], layout, fresh, seeds)]
        n_seeds = seeds or self.cfg.seeds
        seed_list = np.arange(n_seeds) + (FRESH_TRAIN_SEED if fresh else 0)
        if layout == "constants":
            programs = stack([encode(objectives[0])])
            constants = np.stack([constant_vector(o) for o in objectives])[None]
        else:
            padded = list(objectives) + [objectives[-1]] * (self.cfg.batch - n)
            programs = stack([encode(o) for o in padded])
            constants = np.stack([constant_vector(o) for o in padded])[:, None, :]
        per_seed = np.zeros((n, n_seeds))
        scores = [[] for _ in range(n)]
        failures = [""] * n
        episodes = self._episodes(fresh)
        for task, ds, ref in self.combos():
            trained = train_population(interpret, ds, ref, programs, constants, seed_list, self.cfg.train)
            params = trained.params
            # -> (n, S, ...) in objective order
            if layout == "constants":
                params = {k: np.swapaxes(v[0], 0, 1) for k, v in params.items()}
                stopped, reason = trained.stopped_at[0].T, trained.stop_reason[0].T
            else:
                params = {k: v[:n, :, 0] for k, v in params.items()}
                stopped, reason = trained.stopped_at[:n, :, 0], trained.stop_reason[:n, :, 0]
            flat = {k: v.reshape((n * n_seeds,) + v.shape[2:]) for k, v in params.items()}
            returns = episode_returns(task, flat, episodes, FRESH_EVAL_SEED if fresh else SEARCH_EVAL_SEED,
                                      backend=self.cfg.backend)
            normalised = normalise(task, returns).reshape(n, n_seeds, episodes)
            per_seed += normalised.mean(-1) / len(self.combos())
            for i in range(n):
                for s in range(n_seeds):
                    why = STOP_REASONS[int(reason[i, s])]
                    if why and not failures[i]:
                        failures[i] = f"{why} at step {int(stopped[i, s])} ({task.name} {ds.variant} seed {seed_list[s]})"
                    scores[i].append({"task": task.name, "dataset": ds.variant, "seed": int(seed_list[s]),
                                      "score": float(normalised[i, s].mean()),
                                      "returns": returns.reshape(n, n_seeds, episodes)[i, s].tolist(),
                                      "stop_reason": why})
        out = []
        for i in range(n):
            if failures[i]:
                out.append(Evaluation(None, None, scores[i], failures[i]))
                continue
            mean, ci = mean_ci95(per_seed[i])
            out.append(Evaluation(float(mean), float(ci), scores[i]))
        return out
