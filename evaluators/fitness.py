"""Fitness of objectives for the search: the suite's one scoring function on the search's combos.

Each (task, dataset) of the fitness is a ``Combo`` of the suite (its task's dataset settings unless
overridden). A batch of objectives is trained ``batch`` at a time (on CPU each its own trainer call,
unpadded; on an accelerator one call padded to ``batch``: `evaluators.po_trainer`) from each pi_ref seed
with each training seed, and scored in one batched rollout.

Search fitness uses the validation dataset seed and the search protocol, on all its training seeds or
on the ones given (``train_seeds``: a racing rung; every candidate at a rung sees the same seeds and
episodes, so rungs compare paired). The final report's combos (``combos(fresh=True)``) are on the TEST
dataset seeds (several draws), with new pi_ref and training seeds and new episodes (``evaluators.protocol``).
Fitness = mean normalised score over (task, dataset) combos, units and episodes; its CI is a
Student-t interval over units (each unit's score averaged over combos and episodes).

Multi-fidelity racing (`discovery.racing`) may screen candidates with fewer PO steps first (``evaluate(...,
steps=N)``); their rows are tagged ``rung`` = ``SCREEN_RUNG`` and carry ``steps``. Those rows record the
screening and rank a batch (``first_rung_fitness``), but no fitness is computed from them: ``unit_scores``
leaves them out, so a fitness is always a full-steps figure and screened-out candidates have none.

Selection on label use: a candidate can also be trained on the label-shuffled data on the same units
(``evaluate(..., shuffled=True)``, common random numbers; ``Evaluation.with_control``). Its fitness then
counts only what the labels add: per unit, its score less what its shuffled twin gains over pi_ref
(``label_score``). Without the twin, fitness is the plain score, an upper bound of that figure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np

from evaluators.datasets import DatasetConfig, parse_variant
from evaluators.executors import EXECUTORS, LocalExecutor, make_executor
from evaluators.po_trainer import TrainConfig
from evaluators.protocol import FRESH, SEARCH, TEST_DATA_SEEDS, VALIDATION_DATA_SEED, Combo, Protocol, Setting, \
    score_settings
from evaluators.reference import BCConfig
from evaluators.scoring import BACKENDS, mean_ci95
from evaluators.suite import task_suite

SCREEN_RUNG = -1  # the ``rung`` of score rows trained with fewer PO steps (a screening rung)


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
    batch: int = 8  # candidates per population call (padded to it on an accelerator)
    executor: str = "local"  # where populations are evaluated: "local" or "ray" (evaluators.executors)
    ray_address: str | None = None  # a Ray cluster to join (None: start a local one)

    def validate(self):
        for t in self.tasks:
            task_suite(t)
        for d in self.datasets:
            parse_variant(d)
        if self.dataset is not None:
            self.dataset.validate()
        if self.reference is not None:
            self.reference.validate()
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; use {' or '.join(EXECUTORS)}")
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

    def combo(self, task: str, variant: str, data_seed: int, protocol: Protocol, cache: str | None = None,
              on_event=None) -> Combo:
        """A (task, variant) prepared with this fitness's dataset and BC settings (each task's suite ones
        unless overridden)."""
        return Combo(task, variant, data_seed, self.dataset or task_suite(task).dataset, protocol,
                     self.reference or task_suite(task).reference, cache, on_event=on_event)


@dataclass
class Evaluation:
    fitness: float | None
    ci95: float | None
    scores: list[dict] = field(default_factory=list)  # one per (task, dataset, unit)
    failure: str = ""  # why training stopped, when it did

    def unit_scores(self) -> dict[tuple[int, int], float]:
        """(pi_ref seed, training seed) -> score averaged over the (task, dataset) combos."""
        return unit_scores(self.scores)

    @property
    def controlled(self) -> bool:
        """Whether every unit's score has its shuffled twin (the fitness counts only what the labels add)."""
        rows = _fitness_rows(self.scores)
        return bool(rows) and all("shuffled" in r for r in rows)

    def with_control(self, shuffled: Evaluation) -> Evaluation:
        """This evaluation with the scores of its label-shuffled twin (the same units) in its fitness rows."""
        twin = {(r["task"], parse_variant(r["dataset"]).unshuffled.spec, r.get("reference_seed", 0), r["seed"]):
                r["score"] for r in shuffled.scores}
        scores = [r if _screening(r) else
                  {**r, "shuffled": twin[(r["task"], r["dataset"], r.get("reference_seed", 0), r["seed"])]}
                  for r in self.scores]
        if self.failure:
            return Evaluation(None, None, scores, self.failure)
        mean, ci = mean_ci95(np.array(list(unit_scores(scores).values())))
        return Evaluation(float(mean), float(ci), scores)

    def first_rung_fitness(self) -> float | None:
        """Mean over the first rung's units: what every candidate of a racing batch was ranked on (the
        screening rung's fewer-steps scores when there was one)."""
        if self.failure or not self.scores:
            return None
        first = min(r.get("rung", 0) for r in self.scores)
        return float(np.mean(list(_units([r for r in self.scores if r.get("rung", 0) == first]).values())))

    def extended(self, more: Evaluation) -> Evaluation:
        """This evaluation with the units of ``more`` added (a later racing rung)."""
        scores = self.scores + more.scores
        failure = self.failure or more.failure
        if failure:
            return Evaluation(None, None, scores, failure)
        mean, ci = mean_ci95(np.array(list(unit_scores(scores).values())))
        return Evaluation(float(mean), float(ci), scores)


def label_score(row: dict) -> float:
    """A score row's figure: its score less what its label-shuffled twin gains over pi_ref (the side channel
    the labels are not needed for), when the twin was trained; else its score. A twin that did worse than
    pi_ref (or failed) takes nothing away."""
    score = float(row["score"])
    if "shuffled" not in row:
        return score
    gain = float(row["shuffled"]) - float(row["pi_ref"])
    return score - gain if gain > 0 else score


def _screening(row: dict) -> bool:
    return row.get("rung", 0) == SCREEN_RUNG


def _fitness_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not _screening(r)]


def unit_scores(rows: list[dict]) -> dict[tuple[int, int], float]:
    """Score rows -> {(pi_ref seed, training seed): mean ``label_score`` over the combos}, in first-seen order;
    the units behind a fitness, so screening rows (fewer PO steps) are left out."""
    return _units(_fitness_rows(rows))


def _units(rows: list[dict]) -> dict[tuple[int, int], float]:
    units: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        units.setdefault((int(r.get("reference_seed", 0)), int(r["seed"])), []).append(label_score(r))
    return {k: float(np.mean(v)) for k, v in units.items()}


class FitnessEvaluator:
    def __init__(self, cfg: FitnessConfig, cache: str | None = None, on_event=None, executor=None):
        cfg.validate()
        self.cfg = cfg
        self.cache = cache
        self.on_event = on_event
        self.executor = executor or make_executor(cfg.executor, cfg.ray_address)
        self._combos: dict = {}  # (fresh, seeds) -> combos; None -> the search combos' shuffled twins
        self.pi_ref: float | None = None  # pi_ref's mean score in the latest evaluation (same units)

    def combos(self, fresh: bool = False, seeds: int | None = None) -> list[Combo]:
        """The prepared (task, dataset) combos, built (or read from cache) on first use: on the validation
        data seed, or ``fresh``: on each test data seed (data seeds innermost), ``seeds`` pi_ref seeds each."""
        key = (fresh, seeds)
        if key not in self._combos:
            protocol = self.cfg.protocol(fresh, seeds)
            self._combos[key] = [self.cfg.combo(t, d, s, protocol, self.cache, self.on_event)
                                 for t in self.cfg.tasks for d in self.cfg.datasets
                                 for s in (TEST_DATA_SEEDS if fresh else (VALIDATION_DATA_SEED,))]
        return self._combos[key]

    def _shuffled(self) -> list[Combo]:
        """The search combos on their label-shuffled twins (the same segments, so the same pi_ref)."""
        if None not in self._combos:
            self._combos[None] = [c.with_variant(c.variant.with_shuffled(), c.dataset) for c in self.combos()]
        return self._combos[None]

    def _on_seeds(self, train_seeds: tuple[int, ...], shuffled: bool = False) -> list[Combo]:
        """The search combos (or their shuffled twins) with other training seeds: the same data and pi_ref
        (shallow copies)."""
        out = []
        for combo in self._shuffled() if shuffled else self.combos():
            combo.references  # noqa: B018 - load pi_ref once, shared by the copies
            c = copy.copy(combo)
            c.protocol = replace(combo.protocol, train_seeds=tuple(train_seeds))
            out.append(c)
        return out

    def evaluate(self, objectives: list, train_seeds: tuple[int, ...] | None = None,
                 batch: int | None = None, shuffled: bool = False, steps: int | None = None) -> list[Evaluation]:
        """Search fitness of each objective (validation data seed), or with ``shuffled`` its twin's scores on
        the label-shuffled data (for ``Evaluation.with_control``). ``train_seeds``: the search protocol on
        these training seeds (a racing rung); ``batch``: objectives per population call (default
        ``cfg.batch``; a fixed smaller one suits the few a racing rung trains); ``steps``: PO steps (default
        ``cfg.train.steps``; fewer for a screening rung, whose rows then carry ``steps``).
        Another executor than the local one evaluates chunks of ``batch`` objectives on its workers (a
        population of one chunk stays in this process)."""
        batch = batch or self.cfg.batch
        if not isinstance(self.executor, LocalExecutor) and len(objectives) > batch:
            chunks = [objectives[i:i + batch] for i in range(0, len(objectives), batch)]
            options = {"train_seeds": train_seeds, "batch": batch, "shuffled": shuffled, "steps": steps}
            parts = self.executor.map(_evaluate_chunk, [(self.cfg, self.cache, c, options) for c in chunks])
            self.pi_ref = parts[0][1]
            return [ev for evaluations, _ in parts for ev in evaluations]
        return self._evaluate(objectives, train_seeds, batch, shuffled, steps)

    def _evaluate(self, objectives, train_seeds, batch, shuffled=False, steps=None) -> list[Evaluation]:
        n = len(objectives)
        steps = steps or self.cfg.train.steps
        settings = [Setting(str(i), o, self.cfg.train.lr, steps) for i, o in enumerate(objectives)]
        if train_seeds is None and not shuffled:
            combos = self.combos()
        else:
            combos = self._on_seeds(train_seeds or self.combos()[0].protocol.train_seeds, shuffled)
        per_unit = np.zeros((n, len(combos[0].protocol.units)))
        scores = [[] for _ in range(n)]
        failures = [""] * n
        pi_ref_units = []
        for combo in combos:
            table = score_settings(combo, settings, self.cfg.train, policy_rows=("pi_ref",),
                                   batch=batch, backend=self.cfg.backend)
            pi_ref = table.unit_scores("pi_ref")
            pi_ref_units.append(pi_ref)
            for i, s in enumerate(settings):
                per_unit[i] += table.unit_scores(s.label) / len(combos)
                if s.label in table.failures and not failures[i]:
                    failures[i] = f"{table.failures[s.label]} ({combo.name})"
                row = table.index(s.label)
                for u, (ref_seed, train_seed) in enumerate(table.units):
                    scores[i].append({"task": combo.task.name, "dataset": combo.variant.spec, "seed": train_seed,
                                      "reference_seed": ref_seed, "score": float(table.scores[row, u].mean()),
                                      "pi_ref": float(pi_ref[u]),
                                      "returns": table.returns[row, u].tolist(),
                                      "ranking_accuracy": float(table.ranking[row, u]),
                                      "stop_reason": table.failures.get(s.label, ""),
                                      **({"steps": steps} if steps != self.cfg.train.steps else {})})
        self.pi_ref = float(np.mean(pi_ref_units))
        out = []
        for i in range(n):
            if failures[i]:
                out.append(Evaluation(None, None, scores[i], failures[i]))
                continue
            mean, ci = mean_ci95(per_unit[i])
            out.append(Evaluation(float(mean), float(ci), scores[i]))
        return out


_WORKER_EVALUATORS: dict = {}  # per worker process: evaluators with their combos loaded


def _evaluate_chunk(job) -> tuple[list[Evaluation], float]:
    """An executor's unit of work: one chunk of objectives, evaluated in-process where it runs."""
    cfg, cache, objectives, options = job
    key = (cfg, cache)
    if key not in _WORKER_EVALUATORS:
        _WORKER_EVALUATORS[key] = FitnessEvaluator(replace(cfg, executor="local"), cache)
    evaluator = _WORKER_EVALUATORS[key]
    return evaluator.evaluate(objectives, **options), evaluator.pi_ref
