"""Training the behaviour policies of a task with PPO and choosing its four shipped levels.

`train_behaviour` runs PPO (`evaluators.ppo`), keeps snapshots along the way, picks the ``random``,
``low``, ``medium`` and ``expert`` levels by measured return (`LEVEL_FRACTIONS` of the way from the
untrained network to the best snapshot) and writes them with their manifest into the catalogue
(`evaluators.behaviour`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np

from evaluators.behaviour import LEVELS, REFERENCE_EPISODES, load_level, load_manifest, policy_dir
from evaluators.paths import cache_root
from evaluators.policy import CheckpointError, save_policy, stack
from evaluators.ppo import PPOConfig, PPOResult, Snapshot, train_ppo
from evaluators.scoring import episode_returns
from evaluators.tasks import Task

LEVEL_FRACTIONS = {"low": 0.25, "medium": 0.55}  # of the way from R_random to R_expert
MEASURE_EPISODES = 20
SELECTION_EPISODES = 4
SHORTLIST = 6


def measure(task: Task, params: list[dict], episodes: int, seed: int, deterministic: bool) -> np.ndarray:
    return episode_returns(task, stack(params), episodes, seed, deterministic=deterministic)


def select_levels(task: Task, snapshots, seed: int) -> dict[str, object]:
    """Pick the level snapshots from a PPO run.

    expert: the best of the top three (by the training curve) re-measured deterministically.
    low/medium: datasets are generated with sampled actions, so these are chosen on STOCHASTIC
    returns, nearest to their fraction of the way from the random to the expert level: every snapshot
    is screened with a few episodes, then the SHORTLIST nearest are re-measured with MEASURE_EPISODES
    (returns of falling walkers are bimodal, so a few episodes can be far off) and the nearest kept.
    """
    by_eval = sorted(snapshots, key=lambda s: s.eval_return, reverse=True)
    finalists = by_eval[:3]
    finalist_returns = measure(task, [s.params for s in finalists], MEASURE_EPISODES, seed, True).mean(1)
    expert = finalists[int(np.argmax(finalist_returns))]
    screen = measure(task, [s.params for s in snapshots], SELECTION_EPISODES, seed + 30, False).mean(1)
    expert_index = next(i for i, s in enumerate(snapshots) if s is expert)
    r0 = screen[0]
    r1 = measure(task, [expert.params], MEASURE_EPISODES, seed + 40, False).mean()
    chosen = {"random": snapshots[0], "expert": expert}
    for level, frac in LEVEL_FRACTIONS.items():
        target = r0 + frac * (r1 - r0)
        others = [j for j in range(1, len(snapshots)) if j != expert_index]
        shortlist = sorted(others, key=lambda j: abs(screen[j] - target))[:SHORTLIST]
        measured = measure(task, [snapshots[j].params for j in shortlist], MEASURE_EPISODES, seed + 50, False).mean(1)
        chosen[level] = snapshots[shortlist[int(np.argmin(np.abs(measured - target)))]]
    return chosen


def save_snapshots(task: Task, result, seed: int, directory: str) -> str:
    """Every PPO snapshot (not shipped) so levels can be re-selected without retraining."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    arrays = {f"{i}/{k}": np.ascontiguousarray(v, np.float32)
              for i, snap in enumerate(result.snapshots) for k, v in snap.params.items()}
    meta = [[snap.step, snap.eval_return] for snap in result.snapshots]
    path = os.path.join(directory, f"{task.name}-seed{seed}-snapshots.safetensors")
    save_file(arrays, path, metadata={"meta": json.dumps({"snapshots": meta, "curve": result.curve})})
    return path


def load_snapshots(path: str):
    from safetensors import safe_open
    from safetensors.numpy import load_file


    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()["meta"])
    arrays = load_file(path)
    result = PPOResult()
    for i, (step, ret) in enumerate(meta["snapshots"]):
        prefix = f"{i}/"
        params = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        result.snapshots.append(Snapshot(int(step), float(ret), params))
    result.curve = [tuple(c) for c in meta["curve"]]
    return result


def write_behaviour(task: Task, chosen: dict, curve, trainer: dict, seed: int, root: str | None = None) -> dict:
    """Measure every level, then write checkpoints and the manifest (each file atomically)."""
    out = policy_dir(task, root)
    os.makedirs(out, exist_ok=True)
    params = [chosen[level].params for level in LEVELS]
    stochastic = measure(task, params, MEASURE_EPISODES, seed + 10, deterministic=False)
    deterministic = measure(task, params, MEASURE_EPISODES, seed + 10, deterministic=True)
    r_random, r_expert = _reference_pair(task, chosen["random"].params, chosen["expert"].params, seed)
    levels = {}
    for i, level in enumerate(LEVELS):
        save_policy(os.path.join(out, f"{level}.safetensors"), chosen[level].params,
                    {"task": task.name, "level": level, "train_step": chosen[level].step})
        levels[level] = {
            "file": f"{level}.safetensors",
            "train_step": int(chosen[level].step),
            "episodes": MEASURE_EPISODES,
            "return_mean": float(stochastic[i].mean()),
            "return_std": float(stochastic[i].std()),
            "deterministic_return_mean": float(deterministic[i].mean()),
            "deterministic_return_std": float(deterministic[i].std()),
        }
    manifest = {
        "task": task.name,
        "gym_id": task.gym_id,
        "reference": {
            "random_return": float(r_random),
            "expert_return": float(r_expert),
            "episodes": REFERENCE_EPISODES,
            "note": REFERENCE_NOTE,
        },
        "levels": levels,
        "trainer": {**trainer, "seed": seed},
        "curve": [[int(s), float(r)] for s, r in curve],
    }
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    _plot_curve(task, manifest, os.path.join(out, "training_curve.png"))
    return manifest


REFERENCE_NOTE = "R_random: random level, R_expert: expert level, both deterministic (as every score)"


def _reference_pair(task: Task, random_params: dict, expert_params: dict, seed: int) -> tuple[float, float]:
    returns = measure(task, [random_params, expert_params], REFERENCE_EPISODES, seed + 20, deterministic=True)
    return float(returns[0].mean()), float(returns[1].mean())


def remeasure(task: Task, root: str | None = None) -> dict:
    """Measure R_random and R_expert (deterministic) and every level's returns again, on the seeds the
    manifest was made with, and rewrite them in the manifest (after a change to how policies are evaluated)."""
    manifest = load_manifest(task, root)
    seed = int(manifest.get("trainer", {}).get("seed", 0))
    params = [load_level(task, level, root) for level in LEVELS]
    r_random, r_expert = _reference_pair(task, params[LEVELS.index("random")], params[LEVELS.index("expert")], seed)
    manifest["reference"].update(random_return=r_random, expert_return=r_expert, episodes=REFERENCE_EPISODES,
                                 note=REFERENCE_NOTE)
    stochastic = measure(task, params, MEASURE_EPISODES, seed + 10, deterministic=False)
    deterministic = measure(task, params, MEASURE_EPISODES, seed + 10, deterministic=True)
    for i, level in enumerate(LEVELS):
        manifest["levels"][level].update(
            return_mean=float(stochastic[i].mean()), return_std=float(stochastic[i].std()),
            deterministic_return_mean=float(deterministic[i].mean()),
            deterministic_return_std=float(deterministic[i].std()))
    path = os.path.join(policy_dir(task, root), "manifest.json")
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)
    return manifest


def _plot_curve(task: Task, manifest: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, rets = zip(*manifest["curve"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.array(steps) / 1e6, rets, label="PPO (deterministic eval)")
    for level, info in manifest["levels"].items():
        ax.axhline(info["deterministic_return_mean"], ls=":", lw=0.8)
        ax.text(0, info["deterministic_return_mean"], level, fontsize=7, va="bottom")
    ax.set_xlabel("environment steps (millions)")
    ax.set_ylabel("episode return")
    ax.set_title(f"{task.gym_id} behaviour policy training")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train_behaviour(task: Task, total_steps: int, seed: int = 0, root: str | None = None,
                    on_progress=None, reselect: bool = False) -> dict:
    """PPO, then level selection and the manifest. ``reselect``: reuse the saved snapshots of a run."""

    cfg = PPOConfig(total_steps=total_steps)
    snapshots_dir = os.path.join(cache_root(), "behaviour")
    saved = os.path.join(snapshots_dir, f"{task.name}-seed{seed}-snapshots.safetensors")
    if reselect:
        if not os.path.exists(saved):
            raise CheckpointError(f"no saved PPO snapshots at {saved}; train without --reselect first")
        result = load_snapshots(saved)
    else:
        result = train_ppo(task, cfg, seed, on_progress=on_progress)
        save_snapshots(task, result, seed, snapshots_dir)
    chosen = select_levels(task, result.snapshots, seed)
    trainer = {"algorithm": "ppo", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}
    return write_behaviour(task, chosen, result.curve, trainer, seed, root)
