"""Native backend: a batch of CPU MuJoCo simulations stepped in parallel threads.

Every environment owns an ``MjData`` that lives across steps exactly like Gymnasium's
``MujocoEnv`` (so solver warm starts, and the post-step quantities Ant reads, match it to the bit).
MuJoCo releases the GIL inside ``mj_step``, so a thread pool over chunks of environments uses all
cores; the policy runs once per control step on the whole batch with numpy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mujoco
import numpy as np

from evaluators.policy import ACTION_LIMIT, batched_policy_mean
from evaluators.tasks import MAX_EPISODE_STEPS, Task


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class NativeBatch:
    """``n_envs`` independent copies of ``task``; ``reset`` and ``step`` act on all (or a mask)."""

    def __init__(self, task: Task, n_envs: int, n_threads: int | None = None):
        self.task = task
        self.model = task.load_model()
        self.n_envs = n_envs
        self.datas = [mujoco.MjData(self.model) for _ in range(n_envs)]
        n_threads = max(1, min(n_threads or default_threads(), n_envs))
        self._chunks = [c for c in np.array_split(np.arange(n_envs), n_threads) if len(c)]
        self._pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
        m = self.model
        self.qpos = np.zeros((n_envs, m.nq))
        self.qvel = np.zeros((n_envs, m.nv))
        self.cfrc_ext = np.zeros((n_envs, m.nbody, 6))
        self.torso_xpos = np.zeros((n_envs, 3))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _gather(self, i: int) -> None:
        d = self.datas[i]
        self.qpos[i] = d.qpos
        self.qvel[i] = d.qvel
        if self.task.uses_contact_forces:
            self.cfrc_ext[i] = d.cfrc_ext
        if self.task.position_from_torso:
            self.torso_xpos[i] = d.xpos[1]

    def observation(self) -> np.ndarray:
        return self.task.observe(np, self.qpos, self.qvel, self.cfrc_ext)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray, which: np.ndarray | None = None) -> np.ndarray:
        """Put env ``which[k]`` in state (qpos[k], qvel[k]) as Gymnasium's ``set_state`` does."""
        which = np.arange(self.n_envs) if which is None else np.asarray(which)
        for k, i in enumerate(which):
            d = self.datas[i]
            mujoco.mj_resetData(self.model, d)
            d.qpos[:] = qpos[k]
            d.qvel[:] = qvel[k]
            mujoco.mj_forward(self.model, d)
            self._gather(i)
        return self.observation()

    def _step_chunk(self, idx, actions, active):
        m, d_all, frame_skip = self.model, self.datas, self.task.frame_skip
        post_constraint = self.task.uses_contact_forces
        for i in idx:
            if not active[i]:
                continue
            d = d_all[i]
            d.ctrl[:] = actions[i]
            mujoco.mj_step(m, d, frame_skip)
            if post_constraint:
                mujoco.mj_rnePostConstraint(m, d)
            self._gather(i)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        """One control step of every active env: (observation, reward, terminated), all envs."""
        active = np.ones(self.n_envs, bool) if active is None else active
        task = self.task
        x_before = task.forward_position(self.qpos, self.torso_xpos).copy()
        if self._pool is None:
            self._step_chunk(self._chunks[0], actions, active)
        else:
            list(self._pool.map(lambda c: self._step_chunk(c, actions, active), self._chunks))
        x_after = task.forward_position(self.qpos, self.torso_xpos)
        healthy = task.healthy(np, self.qpos, self.qvel)
        reward = task.reward(np, x_before, x_after, actions, healthy, self.cfrc_ext)
        return self.observation(), reward, task.terminated(np, healthy)


@dataclass
class Rollout:
    """Per-env results of ``run_policies``; per-step arrays only when recorded."""

    returns: np.ndarray  # (B,)
    lengths: np.ndarray  # (B,) steps taken before termination or the horizon
    terminated: np.ndarray  # (B,) ended by the task's termination rule
    observations: np.ndarray | None = None  # (B, T, obs_dim): observation before each action
    actions: np.ndarray | None = None  # (B, T, act_dim)
    rewards: np.ndarray | None = None  # (B, T)
    qpos: np.ndarray | None = None  # (B, T, nq): simulator state before each action
    qvel: np.ndarray | None = None  # (B, T, nv)
    final_qpos: np.ndarray | None = None
    final_qvel: np.ndarray | None = None


def run_policies(
    batch: NativeBatch,
    params: dict,
    policy_index: np.ndarray,
    qpos0: np.ndarray,
    qvel0: np.ndarray,
    horizon: int = MAX_EPISODE_STEPS,
    action_rng: np.random.Generator | None = None,
    record: bool = False,
) -> Rollout:
    """Run env i with policy ``policy_index[i]`` from (qpos0[i], qvel0[i]) for up to ``horizon``.

    ``params`` is a batch of P policies. With ``action_rng`` actions are sampled from each policy's
    Gaussian, otherwise the mean action is taken. Envs stop at termination; their rest is masked.
    """
    B = batch.n_envs
    P = len(params["log_std"])
    policy_index = np.asarray(policy_index)
    counts = np.bincount(policy_index, minlength=P)
    width = int(counts.max())
    # Envs are laid out as a (P, width) grid so one einsum evaluates every policy at once.
    slot = np.zeros(B, int)
    for p in range(P):
        members = np.flatnonzero(policy_index == p)
        slot[members] = np.arange(len(members))
    std = np.exp(params["log_std"])[policy_index]

    obs = batch.reset(qpos0, qvel0)
    active = np.ones(B, bool)
    returns = np.zeros(B)
    lengths = np.zeros(B, int)
    terminated = np.zeros(B, bool)
    if record:
        rec_obs = np.zeros((B, horizon, obs.shape[-1]), np.float32)
        rec_act = np.zeros((B, horizon, batch.model.nu), np.float32)
        rec_rew = np.zeros((B, horizon), np.float32)
        rec_qpos = np.zeros((B, horizon, batch.model.nq))
        rec_qvel = np.zeros((B, horizon, batch.model.nv))
    grid = np.zeros((P, width, obs.shape[-1]))
    for t in range(horizon):
        grid[policy_index, slot] = obs
        mean = batched_policy_mean(params, grid)[policy_index, slot]
        action = mean if action_rng is None else mean + std * action_rng.standard_normal(mean.shape)
        action = np.clip(action, -ACTION_LIMIT, ACTION_LIMIT)
        if record:
            rec_obs[:, t] = obs
            rec_act[:, t] = action
            rec_qpos[:, t], rec_qvel[:, t] = batch.qpos, batch.qvel
        obs, reward, term = batch.step(action, active)
        reward = np.where(active, reward, 0.0)
        returns += reward
        lengths += active
        if record:
            rec_rew[:, t] = reward
        newly_done = active & term
        terminated |= newly_done
        active &= ~term
        if not active.any():
            break
    out = Rollout(returns, lengths, terminated, final_qpos=batch.qpos.copy(), final_qvel=batch.qvel.copy())
    if record:
        out.observations, out.actions, out.rewards = rec_obs, rec_act, rec_rew
        out.qpos, out.qvel = rec_qpos, rec_qvel
    return out
