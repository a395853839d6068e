"""``discover bench``: objectives x dataset variants x tasks -> normalised scores with 95% CIs.

For each (task, variant) the dataset and pi_ref are built (cached), all objectives x seeds train in ONE
population call, and all trained policies are scored in ONE batched rollout on the same start states
(common random numbers, so objectives differ by what they learned, not by episode luck). A score's
CI is a Student-t interval over training seeds (each seed's score averaged over episodes); pi_ref's is
over episodes.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from evaluators.datasets import DatasetConfig, build
from evaluators.po_trainer import TrainConfig, train_population
from evaluators.reference import reference_policy
from evaluators.scoring import mean_ci95, normalise, episode_returns
from evaluators.tasks import get_task

EVAL_SEED = 10_000  # start states for scoring, disjoint from dataset and training seeds


@dataclass(frozen=True)
class BenchPreset:
    tasks: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: int
    episodes: int
    dataset: DatasetConfig = DatasetConfig()
    train: TrainConfig = TrainConfig()


PRESETS = {
    "quick": BenchPreset(tasks=("hopper",), variants=("clean", "noisy:0.2"), seeds=5, episodes=3,
                         dataset=DatasetConfig(n_pairs=512), train=TrainConfig(steps=100)),
    "full": BenchPreset(tasks=("hopper", "walker2d", "halfcheetah", "ant"),
                        variants=("clean", "noisy:0.2", "noisy:0.4", "mixed"), seeds=5, episodes=10,
                        dataset=DatasetConfig(n_pairs=2048), train=TrainConfig(steps=300)),
}


@dataclass
class BenchRow:
    task: str
    variant: str
    objective: str
    mean: float
    ci95: float
    seed_scores: list[float]
    notes: str = ""


@dataclass
class BenchResult:
    preset: dict
    rows: list[BenchRow] = field(default_factory=list)
    seconds: float = 0.0

    def cell(self, task, variant, objective) -> BenchRow | None:
        for r in self.rows:
            if (r.task, r.variant, r.objective) == (task, variant, objective):
                return r
        return None


def run_bench(objectives: dict, preset: BenchPreset, data_seed: int = 0, cache: str | None = None,
              on_progress=None) -> BenchResult:
    """Train and score every objective on every (task, variant) of ``preset``.

    ``objectives``: name -> grammar ``Objective``. ``on_progress(message)`` is told what runs next.
    """
    from grammar.kernel import constant_vector, encode, interpret, stack as stack_programs

    names = list(objectives)
    programs = stack_programs([encode(objectives[n]) for n in names])
    constants = np.stack([constant_vector(objectives[n]) for n in names])[:, None, :]
    seeds = np.arange(preset.seeds)
    result = BenchResult(preset=_preset_dict(preset))
    start = time.perf_counter()
    for task_name in preset.tasks:
        task = get_task(task_name)
        for variant in preset.variants:
            if on_progress:
                on_progress(f"{task_name} {variant}: dataset and pi_ref")
            ds = build(task, variant, data_seed, preset.dataset, cache)
            ref = reference_policy(ds)
            if on_progress:
                on_progress(f"{task_name} {variant}: training {len(names)} objectives x {len(seeds)} seeds")
            trained = train_population(interpret, ds, ref, programs, constants, seeds, preset.train)
            if on_progress:
                on_progress(f"{task_name} {variant}: scoring {len(names) * len(seeds) + 1} policies")
            flat = {k: v[:, :, 0].reshape((-1,) + v.shape[3:]) for k, v in trained.params.items()}
            both = {k: np.concatenate([flat[k], ref[k][None]]) for k in flat}
            returns = episode_returns(task, both, preset.episodes, EVAL_SEED)
            scores = normalise(task, returns)
            per_seed = scores[:-1].mean(-1).reshape(len(names), len(seeds))
            reasons = trained.reasons()[:, :, 0]
            for i, name in enumerate(names):
                mean, ci = mean_ci95(per_seed[i])
                stopped = [f"seed {s}: {r} at step {trained.stopped_at[i, s, 0]}"
                           for s, r in enumerate(reasons[i]) if r]
                result.rows.append(BenchRow(task_name, ds.variant, name, float(mean), float(ci),
                                            per_seed[i].tolist(), "; ".join(stopped)))
            ref_mean, ref_ci = mean_ci95(scores[-1])
            result.rows.append(BenchRow(task_name, ds.variant, "pi_ref", float(ref_mean), float(ref_ci),
                                        [float(ref_mean)], "behaviour cloning on chosen; CI over episodes"))
    result.seconds = time.perf_counter() - start
    return result


def _preset_dict(preset: BenchPreset) -> dict:
    d = asdict(preset)
    return json.loads(json.dumps(d, default=list))


def with_overrides(preset: BenchPreset, tasks=None, variants=None, seeds=None, episodes=None,
                   steps=None, pairs=None) -> BenchPreset:
    return replace(
        preset,
        tasks=tuple(tasks) if tasks else preset.tasks,
        variants=tuple(variants) if variants else preset.variants,
        seeds=seeds or preset.seeds,
        episodes=episodes or preset.episodes,
        train=replace(preset.train, steps=steps) if steps else preset.train,
        dataset=replace(preset.dataset, n_pairs=pairs) if pairs else preset.dataset,
    )


# -- reports -------------------------------------------------------------------------------------

def columns(result: BenchResult) -> list[tuple[str, str]]:
    seen = []
    for r in result.rows:
        if (r.task, r.variant) not in seen:
            seen.append((r.task, r.variant))
    return seen


def objective_names(result: BenchResult) -> list[str]:
    names = []
    for r in result.rows:
        if r.objective not in names:
            names.append(r.objective)
    return names


def format_cell(row: BenchRow | None) -> str:
    if row is None:
        return "-"
    text = f"{row.mean:.1f} ± {row.ci95:.1f}"
    return text + " *" if row.notes and row.objective != "pi_ref" else text


def to_markdown(result: BenchResult) -> str:
    cols = columns(result)
    lines = ["| objective | " + " | ".join(f"{t} {v}" for t, v in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name in objective_names(result):
        lines.append(f"| {name} | " + " | ".join(format_cell(result.cell(t, v, name)) for t, v in cols) + " |")
    lines.append("")
    lines.append(f"Normalised score (100 = expert, 0 = random), mean ± 95% CI over {result.preset['seeds']} "
                 f"training seeds ({result.preset['episodes']} episodes each); pi_ref's CI is over episodes. "
                 f"`*`: some seed stopped early on a non-finite value (see the JSON). "
                 f"Wall time {result.seconds:.0f} s.")
    return "\n".join(lines)


def write_reports(result: BenchResult, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"bench.{ext}") for ext in ("md", "csv", "json")}
    with open(paths["md"], "w") as f:
        f.write(to_markdown(result) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "variant", "objective", "mean", "ci95", "seed_scores", "notes"])
        for r in result.rows:
            w.writerow([r.task, r.variant, r.objective, f"{r.mean:.4f}", f"{r.ci95:.4f}",
                        " ".join(f"{s:.4f}" for s in r.seed_scores), r.notes])
    with open(paths["json"], "w") as f:
        json.dump({"preset": result.preset, "seconds": result.seconds, "rows": [asdict(r) for r in result.rows]},
                  f, indent=1)
    return paths
