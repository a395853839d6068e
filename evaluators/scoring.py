"""Scoring API: a batch of policies x episodes in one call, on either backend.

Every policy meets the same start states (state i depends only on (seed, i)), so differences
between policies are not start-state noise. Scores are normalised with the task's measured v5
references: 100 * (R - R_random) / (R_expert - R_random).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluators.behaviour import reference_returns
from evaluators.errors import SuiteError
from evaluators.native import NativeBatch, run_policies
from evaluators.tasks import MAX_EPISODE_STEPS, Task

BACKENDS = ("native", "mjx")


class BackendError(SuiteError):
    pass


def episode_returns(task: Task, params: dict, episodes: int, seed: int, *, backend: str = "native",
                    deterministic: bool = True, horizon: int = MAX_EPISODE_STEPS,
                    n_threads: int | None = None) -> np.ndarray:
    """Undiscounted returns, shape (P, episodes), of the P policies in ``params``."""
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    P = len(params["log_std"])
    qpos0, qvel0 = task.initial_states(episodes, seed)
    qpos0, qvel0 = np.tile(qpos0, (P, 1)), np.tile(qvel0, (P, 1))
    policy_index = np.repeat(np.arange(P), episodes)
    if backend == "native":
        rng = None if deterministic else np.random.default_rng([seed, 1])
        with NativeBatch(task, P * episodes, n_threads) as batch:
            out = run_policies(batch, params, policy_index, qpos0, qvel0, horizon, rng)
        return out.returns.reshape(P, episodes)
    if backend == "mjx":
        from evaluators.mjx_backend import mjx_episode_returns  # jax and MJX load only for this backend

        returns = mjx_episode_returns(task, params, policy_index, qpos0, qvel0, horizon=horizon,
                                      deterministic=deterministic, seed=seed)
        return np.asarray(returns, dtype=np.float64).reshape(P, episodes)
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def normalise(task: Task, returns):
    r_random, r_expert = reference_returns(task)
    return 100.0 * (np.asarray(returns) - r_random) / (r_expert - r_random)


def mean_ci95(x: np.ndarray, axis: int = -1):
    """Mean and half-width of a Student-t 95% confidence interval along ``axis``."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    mean = x.mean(axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = x.std(axis, ddof=1) / np.sqrt(n)
    return mean, stats.t.ppf(0.975, n - 1) * sem


@dataclass
class Scores:
    returns: np.ndarray  # (P, E)
    normalised: np.ndarray  # (P, E)
    mean: np.ndarray  # (P,) normalised
    ci95: np.ndarray  # (P,) half-width


def score(task: Task, params: dict, episodes: int = 10, seed: int = 0, *, backend: str = "native",
          deterministic: bool = True) -> Scores:
    returns = episode_returns(task, params, episodes, seed, backend=backend, deterministic=deterministic)
    normalised = normalise(task, returns)
    mean, ci = mean_ci95(normalised)
    return Scores(returns, normalised, mean, ci)
