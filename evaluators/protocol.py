"""The evaluation protocol and the one scoring function: how every compared score is made.

A score is made on a *combo* (task, dataset variant, dataset seed): the dataset's pairs are split into
training pairs and held-out pairs; pi_ref is behaviour cloning on both sides of the training pairs,
once per reference seed; the oracle is behaviour cloning on the best level's segments, likewise.
An objective *setting* (objective, learning rate, training steps) is trained from every pi_ref seed
with every training seed, and every trained policy (with pi_ref and the oracle) is scored in ONE
batched rollout on the same evaluation episodes.

The replication unit is a (reference seed, training seed) pair; its score is the mean normalised
return over the episodes. Reported comparisons take their units over several draws of the data too
(``TEST_DATA_SEEDS``, ``score_over_draws``): (data seed, reference seed, training seed), since a new draw
of the same variant moves scores as much as the seeds do. Every setting sees the same units and the
same episodes (common random numbers), so two settings are compared PAIRED: the per-unit difference,
with a Student-t 95% CI over units. The label-shuffle control of a variant reuses the true-label pi_ref (the same pairs), so the
shuffled-label comparison is paired too.

Seeds, in one place:
- dataset seeds: ``VALIDATION_DATA_SEED`` to tune and search, ``TEST_DATA_SEEDS`` for reports (never
  searched or tuned on; ``TEST_DATA_SEED``, the first, where one draw is all a report can afford);
- ``Protocol``: reference seeds, training seeds, episodes, the evaluation start-state seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from evaluators.datasets import DatasetConfig, PreferenceDataset, Variant, build, parse_variant
from evaluators.po_trainer import STOP_REASONS, TrainConfig, ranking_accuracy, train_population
from evaluators.reference import BCConfig, reference_policies
from evaluators.scoring import episode_returns, mean_ci95, normalise
from evaluators.tasks import Task, get_task
from grammar.kernel import constant_vector, encode, interpret, stack
from grammar.objective import Objective

VALIDATION_DATA_SEED = 0  # tuning and search
TEST_DATA_SEEDS = (1, 2)  # fresh draws of the data for every reported comparison: units span them
TEST_DATA_SEED = TEST_DATA_SEEDS[0]  # where a report affords one draw (the language suite)
POLICY_ROWS = ("pi_ref", "oracle")  # policies scored beside every table: floor and ceiling
SHUFFLED = " [shuffled]"  # label suffix of a setting's label-shuffle control


@dataclass(frozen=True)
class Protocol:
    reference_seeds: tuple[int, ...]
    train_seeds: tuple[int, ...]
    episodes: int
    eval_seed: int
    heldout_fraction: float = 0.2

    def validate(self):
        if not self.reference_seeds or not self.train_seeds or self.episodes < 1:
            raise ValueError("a protocol needs reference seeds, training seeds and at least one episode")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"held-out fraction must be in [0, 1), got {self.heldout_fraction}")

    @property
    def units(self) -> list[tuple[int, int]]:
        return [(r, s) for r in self.reference_seeds for s in self.train_seeds]

    def describe(self, data_seeds: tuple[int, ...] = ()) -> str:
        """The protocol in words; with ``data_seeds``, on each of those draws of the data (units over them)."""
        draws = (f" on each of {len(data_seeds)} data draws (seeds {', '.join(map(str, data_seeds))})"
                 if data_seeds else "")
        unit = "(data seed, pi_ref seed, training seed)" if data_seeds else "(pi_ref, training) seed"
        return (f"{len(self.reference_seeds)} pi_ref seeds x {len(self.train_seeds)} training seeds x "
                f"{self.episodes} episodes (start states seed {self.eval_seed}){draws}; paired Student-t 95% CI over "
                f"the {len(self.units) * max(len(data_seeds), 1)} {unit} units; {self.heldout_fraction:.0%} of pairs "
                "held out")


SEARCH = Protocol(reference_seeds=(0,), train_seeds=(0, 1), episodes=2, eval_seed=10_000)
TUNING = Protocol(reference_seeds=(0, 1), train_seeds=(500,), episodes=3, eval_seed=30_000)
FRESH = Protocol(reference_seeds=(0, 1, 2, 3, 4), train_seeds=(1_000,), episodes=5, eval_seed=20_000)


@dataclass(frozen=True)
class Setting:
    """One objective with its training hyper-parameters (what a tuning grid varies)."""

    label: str
    objective: Objective
    lr: float
    steps: int


class Combo:
    """One (task, variant, dataset seed) prepared for scoring: split data, pi_ref and oracle per seed."""

    def __init__(self, task: str | Task, variant: str | Variant, data_seed: int, dataset: DatasetConfig,
                 protocol: Protocol, bc: BCConfig = BCConfig(), cache: str | None = None, on_event=None):
        self.task = get_task(task) if isinstance(task, str) else task
        self.variant = parse_variant(variant) if isinstance(variant, str) else variant
        self.data_seed, self.protocol, self.bc, self.cache, self.on_event = data_seed, protocol, bc, cache, on_event
        if on_event:
            on_event(f"preparing {self.task.name} {self.variant.spec} (data seed {data_seed}): dataset and pi_ref")
        self.dataset = dataset
        full = build(self.task, self.variant, data_seed, dataset, cache)
        self.train, self.heldout = full.split(protocol.heldout_fraction)
        base = full if not self.variant.shuffled else build(self.task, self.variant.unshuffled, data_seed,
                                                            dataset, cache)
        self.base_train, self.base_heldout = base.split(protocol.heldout_fraction)

    @property
    def name(self) -> str:
        return f"{self.task.name} {self.variant.spec}"

    def _clones(self, source: str) -> list[dict]:
        # pi_ref and the oracle depend on the segments only, never on the labels: the shuffled control
        # shares them with its true-label variant.
        return reference_policies(self.base_train, [replace(self.bc, source=source, seed=s)
                                                     for s in self.protocol.reference_seeds], self.cache)

    @cached_property
    def references(self) -> list[dict]:
        return self._clones("both")

    @cached_property
    def oracles(self) -> list[dict]:
        return self._clones("best")

    def with_variant(self, variant: str | Variant, dataset: DatasetConfig) -> Combo:
        return Combo(self.task, variant, self.data_seed, dataset, self.protocol, self.bc, self.cache, self.on_event)


@dataclass
class ScoreTable:
    """Scores of settings (and of pi_ref and the oracle) on one combo, per unit and episode."""

    combo: str
    labels: list[str]
    units: list[tuple[int, ...]]  # (reference seed, training seed), led by the data seed over draws
    scores: np.ndarray  # (rows, units, episodes) normalised
    returns: np.ndarray  # (rows, units, episodes) raw
    ranking: np.ndarray  # (rows, units) ranking accuracy on the true-label held-out pairs (NaN: no implicit reward)
    failures: dict[str, str] = field(default_factory=dict)  # label -> why training stopped

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def unit_scores(self, label: str) -> np.ndarray:
        return self.scores[self.index(label)].mean(-1)

    def mean_ci(self, label: str) -> tuple[float, float]:
        mean, ci = mean_ci95(self.unit_scores(label))
        return float(mean), float(ci)

    def paired(self, a: str, b: str) -> tuple[float, float]:
        """Mean and 95% CI half-width of score(a) - score(b) over the common units."""
        mean, ci = mean_ci95(self.unit_scores(a) - self.unit_scores(b))
        return float(mean), float(ci)

    def ranking_mean(self, label: str) -> float:
        return float(self.ranking[self.index(label)].mean())

    def row(self, label: str) -> dict:
        mean, ci = self.mean_ci(label)
        return {"label": label, "mean": mean, "ci95": ci, "unit_scores": self.unit_scores(label).tolist(),
                "ranking_accuracy": self.ranking_mean(label), "failure": self.failures.get(label, "")}

    @staticmethod
    def over_draws(tables: list[ScoreTable], data_seeds: list[int]) -> ScoreTable:
        """One (task, variant)'s tables on several data draws (the same rows) as one table whose units are
        (data seed, reference seed, training seed)."""
        first = tables[0]
        if any(t.labels != first.labels for t in tables) or len(tables) != len(data_seeds):
            raise ValueError("tables over data draws need the same rows, one table per data seed")
        failures = {}
        for d, t in zip(data_seeds, tables):
            for label, why in t.failures.items():
                failures.setdefault(label, f"{why} (data seed {d})")
        return ScoreTable(first.combo, first.labels, [(d, *u) for d, t in zip(data_seeds, tables) for u in t.units],
                          np.concatenate([t.scores for t in tables], axis=1),
                          np.concatenate([t.returns for t in tables], axis=1),
                          np.concatenate([t.ranking for t in tables], axis=1), failures)

    @staticmethod
    def merge(tables: list[ScoreTable]) -> ScoreTable:
        first = tables[0]
        labels = [label for t in tables for label in t.labels]
        if len(set(labels)) != len(labels):
            raise ValueError("merged score tables repeat a label")
        return ScoreTable(first.combo, labels, first.units, np.concatenate([t.scores for t in tables]),
                          np.concatenate([t.returns for t in tables]), np.concatenate([t.ranking for t in tables]),
                          {k: v for t in tables for k, v in t.failures.items()})


def score_settings(combo: Combo, settings: list[Setting], train: TrainConfig = TrainConfig(),
                   policy_rows: tuple[str, ...] = POLICY_ROWS, batch: int = 8, backend: str = "native") -> ScoreTable:
    """Train every setting from every pi_ref seed x training seed and score it with pi_ref and the oracle.

    Settings are trained ``batch`` at a time, one `train_population` per (pi_ref seed, steps): on CPU each
    setting's training then depends on nothing else in the batch nor on its size, elsewhere the batch is
    one call padded to ``batch`` (a search never recompiles). The returned table's rows are the settings,
    then ``policy_rows``.
    """
    protocol = combo.protocol
    R, S = len(protocol.reference_seeds), len(protocol.train_seeds)
    n = len(settings)
    flat: list[dict] = [None] * (n * R)  # trained params, (setting, reference seed) -> batch of S
    failures: dict[str, str] = {}
    by_steps: dict[int, list[int]] = {}
    for i, s in enumerate(settings):
        by_steps.setdefault(s.steps, []).append(i)
    calls = sum(-(-len(m) // batch) for m in by_steps.values()) * R
    done = 0
    for steps, members in by_steps.items():
        cfg = replace(train, steps=steps)
        for start in range(0, len(members), batch):
            chunk = members[start:start + batch]
            programs = stack([encode(settings[i].objective) for i in chunk])
            constants = np.stack([constant_vector(settings[i].objective) for i in chunk])[:, None, :]
            lrs = np.array([settings[i].lr for i in chunk], np.float32)[:, None]
            for r, ref in enumerate(combo.references):
                out = train_population(interpret, combo.train, ref, programs, constants,
                                       np.asarray(protocol.train_seeds), cfg, learning_rates=lrs, pad_to=batch)
                done += 1
                if combo.on_event:
                    combo.on_event(f"{combo.name}: trained population {done}/{calls} ({len(chunk)} x {S} seeds x {steps} steps)")
                reasons = out.reasons()
                for k, i in enumerate(chunk):
                    flat[i * R + r] = {key: v[k, :, 0] for key, v in out.params.items()}
                    for s in range(S):
                        if reasons[k, s, 0] and settings[i].label not in failures:
                            failures[settings[i].label] = (
                                f"{reasons[k, s, 0]} at step {int(out.stopped_at[k, s, 0])} "
                                f"(pi_ref seed {protocol.reference_seeds[r]}, training seed {protocol.train_seeds[s]})")
    # rows x units: settings are (n, R, S) in this order; pi_ref / oracle rows repeat over training seeds
    extra = [p for row in policy_rows for p in getattr(combo, {"pi_ref": "references", "oracle": "oracles"}[row])]
    population = {k: np.concatenate([f[k] for f in flat] + [p[k][None] for p in extra]) for k in combo.references[0]}
    returns = episode_returns(combo.task, population, protocol.episodes, protocol.eval_seed, backend=backend)
    ranking = np.full((n + len(policy_rows), R * S), np.nan)
    for i in range(n):
        for r in range(R):
            ranking[i, r * S:(r + 1) * S] = ranking_accuracy(flat[i * R + r], combo.references[r], combo.base_heldout)
    E = protocol.episodes
    setting_returns = returns[: n * R * S].reshape(n, R * S, E)
    policy_returns = np.repeat(returns[n * R * S:].reshape(len(policy_rows), R, 1, E), S, axis=2).reshape(-1, R * S, E)
    all_returns = np.concatenate([setting_returns, policy_returns])
    return ScoreTable(combo.name, [s.label for s in settings] + list(policy_rows), protocol.units,
                      normalise(combo.task, all_returns), all_returns, ranking, failures)


def score_with_controls(combo: Combo, controlled: list[Setting], others: list[Setting] = (),
                        train: TrainConfig = TrainConfig(), batch: int = 8, backend: str = "native") -> ScoreTable:
    """``score_settings`` of every setting, and each ``controlled`` one again on the label-shuffled
    dataset (label + ``SHUFFLED``): the same pi_ref seeds, training seeds and episodes, so paired. The
    controls train in batches of at most their own number (a few finalists are not padded up to ``batch``)."""
    true = score_settings(combo, list(controlled) + list(others), train, batch=batch, backend=backend)
    if not controlled:
        return true
    shuffled = combo.with_variant(combo.variant.with_shuffled(), combo.dataset)
    control = score_settings(shuffled, [replace(s, label=s.label + SHUFFLED) for s in controlled], train,
                             policy_rows=(), batch=min(batch, len(controlled)), backend=backend)
    return ScoreTable.merge([true, control])


def score_over_draws(combos: list[Combo], controlled: list[Setting], others: list[Setting] = (),
                     train: TrainConfig = TrainConfig(), batch: int = 8, backend: str = "native") -> ScoreTable:
    """``score_with_controls`` on each data draw of one (task, variant) (``combos``: one per data seed), as one
    table over (data seed, reference seed, training seed) units."""
    return ScoreTable.over_draws([score_with_controls(c, controlled, others, train, batch, backend) for c in combos],
                                 [c.data_seed for c in combos])
