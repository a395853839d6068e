"""Behaviour policies: the shipped catalogue (trained once with PPO by `evaluators.behaviour_training`).

Files live in ``evaluators/policies/<task>/``: one safetensors checkpoint per level and
``manifest.json`` holding each level's measured return, the random/expert references used for
normalisation (measured on the v5 tasks here, not D4RL's) and the training curve.

References: R_random is the ``random`` level (the untrained network) and R_expert the ``expert``
level, both acting deterministically (mean action), the mode in which every policy is scored, so 0
on the normalised scale is what an untrained policy scores and 100 what the expert scores.
"""

from __future__ import annotations

import json
import os

from evaluators.policy import CheckpointError, load_policy
from evaluators.tasks import Task

LEVELS = ("random", "low", "medium", "expert")
REFERENCE_EPISODES = 50  # episodes the manifest's random/expert reference returns are measured on
SHIPPED_POLICIES = os.path.join(os.path.dirname(__file__), "policies")


def policy_dir(task: Task, root: str | None = None) -> str:
    """``root``, else $MPO_DISCOVER_POLICIES, else the checkpoints shipped with the package."""
    return os.path.join(root or os.environ.get("MPO_DISCOVER_POLICIES") or SHIPPED_POLICIES, task.name)


def load_manifest(task: Task, root: str | None = None) -> dict:
    path = os.path.join(policy_dir(task, root), "manifest.json")
    if not os.path.exists(path):
        raise CheckpointError(
            f"no behaviour policies for {task.name} ({path} missing); "
            f"train them with `discover policies train --task {task.name}`")
    try:
        with open(path) as f:
            manifest = json.load(f)
        manifest["reference"]["random_return"], manifest["reference"]["expert_return"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"behaviour manifest {path} is damaged: {e}") from None
    return manifest


def load_level(task: Task, level: str, root: str | None = None) -> dict:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    load_manifest(task, root)  # a missing folder gets the "train them with ..." message
    return load_policy(os.path.join(policy_dir(task, root), f"{level}.safetensors"))


def reference_returns(task: Task, root: str | None = None) -> tuple[float, float]:
    ref = load_manifest(task, root)["reference"]
    return float(ref["random_return"]), float(ref["expert_return"])
