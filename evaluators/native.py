"""Native backend: batches of CPU MuJoCo simulations stepped on MuJoCo's own thread pool.

The environments live in ``mujoco.batch.Batch`` objects: each environment's state row holds all
that ``mj_step`` carries from one step to the next (solver warm start included), so results equal
Gymnasium's ``MujocoEnv`` to the bit, and one call steps many environments with the GIL released.
Ant observes ``cfrc_ext`` after ``mj_rnePostConstraint`` on the data ``mj_step`` left behind, so its
batch keeps one ``MjData`` per environment (``persistent``) and that pass runs on a copy of it.

``run_policies`` evaluates a whole batch of policies at once (one einsum over P policies per control
step). With more than one thread and enough environments they are split into two *lanes*, each its
own batch: while one lane's physics runs, a helper thread evaluates the other lane's policies,
rewards and records, so that Python work hides behind the physics. Each row is computed as without
lanes and the action noise is drawn in the same order, so the results are the same to the bit.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mujoco
import mujoco.batch
import numpy as np

from evaluators.policy import ACTION_LIMIT, batched_policy_mean
from evaluators.tasks import MAX_EPISODE_STEPS, Task

LANE_MIN_ENVS = 8  # two lanes from 2 * LANE_MIN_ENVS environments on


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Lane:
    """The environments ``rows`` of a NativeBatch, simulated by one ``mujoco.batch.Batch``."""

    def __init__(self, task: Task, model: mujoco.MjModel, rows: slice, n_threads: int):
        self.rows, self.task, self.model = rows, task, model
        n = rows.stop - rows.start
        self.sim = mujoco.batch.Batch(model, n, nthread=n_threads, persistent=task.uses_contact_forces)
        self.qpos, self.qvel, self.ctrl = (self.sim.bind(f) for f in ("qpos", "qvel", "ctrl"))
        self.torso_xpos = self.sim.bind("xpos")[:, 1] if task.position_from_torso else np.zeros((n, 3))
        self.cfrc_ext = np.zeros((n, model.nbody, 6))
        if task.uses_contact_forces:
            self._cfrc_out = self.sim.bind("cfrc_ext")
            self._scratch = mujoco.MjData(model)

    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Gymnasium's reset of envs ``ids`` (sorted): mj_resetData, set the state, mj_forward."""
        self.sim.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[ids] = qpos
        self.qvel[ids] = qvel
        self.sim.forward(ids)
        if self.task.uses_contact_forces:
            self.cfrc_ext[ids] = self._cfrc_out[ids]

    def step(self, actions: np.ndarray, active: np.ndarray) -> None:
        """One control step of the active envs; the GIL is released while the physics runs."""
        np.copyto(self.ctrl, actions, where=active[:, None])
        self.sim.step(active, nstep=self.task.frame_skip)

    def post_step(self, active: np.ndarray) -> None:
        """Ant: ``cfrc_ext`` as Gymnasium reads it, from mj_rnePostConstraint after mj_step."""
        if not self.task.uses_contact_forces:
            return
        d = self._scratch
        for i in np.flatnonzero(active):
            self.sim.get_data(int(i), d)
            mujoco.mj_rnePostConstraint(self.model, d)
            self.cfrc_ext[i] = d.cfrc_ext


class NativeBatch:
    """``n_envs`` independent copies of ``task``; ``reset`` and ``step`` act on all (or a mask).

    ``lanes``: 1 or 2 (default: 2 with more than one thread and at least 2 * LANE_MIN_ENVS envs).
    """

    def __init__(self, task: Task, n_envs: int, n_threads: int | None = None, lanes: int | None = None):
        self.task = task
        self.model = task.load_model()
        self.n_envs = n_envs
        n_threads = max(1, min(n_threads or default_threads(), n_envs))
        if lanes is None:
            lanes = 2 if n_threads > 1 and n_envs >= 2 * LANE_MIN_ENVS else 1
        if lanes not in (1, 2):
            raise ValueError(f"lanes must be 1 or 2, got {lanes}")
        cuts = np.linspace(0, n_envs, lanes + 1).round().astype(int)
        self.lanes = [_Lane(task, self.model, slice(int(a), int(b)), n_threads)
                      for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        self._helper = ThreadPoolExecutor(1) if len(self.lanes) > 1 else None
        m = self.model
        self.qpos = np.zeros((n_envs, m.nq))
        self.qvel = np.zeros((n_envs, m.nv))
        self.cfrc_ext = np.zeros((n_envs, m.nbody, 6))
        self.torso_xpos = np.zeros((n_envs, 3))

    def close(self):
        if self._helper is not None:
            self._helper.shutdown()
            self._helper = None
        self.lanes = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _gather(self) -> None:
        for lane in self.lanes:
            r = lane.rows
            self.qpos[r], self.qvel[r] = lane.qpos, lane.qvel
            self.cfrc_ext[r], self.torso_xpos[r] = lane.cfrc_ext, lane.torso_xpos

    def observation(self) -> np.ndarray:
        return self.task.observe(np, self.qpos, self.qvel, self.cfrc_ext)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray, which: np.ndarray | None = None) -> np.ndarray:
        """Put env ``which[k]`` in state (qpos[k], qvel[k]) as Gymnasium's ``set_state`` does."""
        which = np.arange(self.n_envs) if which is None else np.asarray(which)
        for lane in self.lanes:
            k = np.flatnonzero((which >= lane.rows.start) & (which < lane.rows.stop))
            k = k[np.argsort(which[k], kind="stable")]
            if len(k):
                lane.reset(which[k] - lane.rows.start, qpos[k], qvel[k])
        self._gather()
        return self.observation()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        """One control step of every active env: (observation, reward, terminated), all envs."""
        active = np.ones(self.n_envs, bool) if active is None else active
        task = self.task
        x_before = task.forward_position(self.qpos, self.torso_xpos).copy()
        for lane in self.lanes:
            lane.step(actions[lane.rows], active[lane.rows])
            lane.post_step(active[lane.rows])
        self._gather()
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


class _LaneRun:
    """One lane's part of ``run_policies``: ``act`` before its physics, ``post`` after it.

    Arrays of the whole run (``out``) are written through this lane's rows only, so the two lanes
    never touch the same memory.
    """

    def __init__(self, lane: _Lane, params, policy_index, std, obs, out: Rollout):
        self.lane, self.std, self.obs = lane, std, obs
        # Only the lane's own policies, cast to float64 once (numpy would cast them in every call;
        # the values and hence the results are the same).
        present, self.policy_index = np.unique(policy_index, return_inverse=True)
        self.params = {k: np.asarray(v[present], np.float64) for k, v in params.items() if k != "log_std"}
        P = len(present)
        # Envs are laid out as a (P, width) grid so one einsum evaluates every policy at once.
        policy_index = self.policy_index
        self.slot = np.zeros(len(policy_index), int)
        for p in range(P):
            members = np.flatnonzero(policy_index == p)
            self.slot[members] = np.arange(len(members))
        width = int(np.bincount(policy_index, minlength=P).max())
        self.grid = np.zeros((P, width, obs.shape[-1]))
        r = lane.rows
        self.returns, self.lengths, self.terminated = out.returns[r], out.lengths[r], out.terminated[r]
        self.active = np.ones(len(policy_index), bool)
        self.out = out
        self.action = self.x_before = None

    def act(self, t: int, action_rng) -> None:
        lane, task, out, r = self.lane, self.lane.task, self.out, self.lane.rows
        self.grid[self.policy_index, self.slot] = self.obs
        mean = batched_policy_mean(self.params, self.grid)[self.policy_index, self.slot]
        action = mean if action_rng is None else mean + self.std * action_rng.standard_normal(mean.shape)
        self.action = np.clip(action, -ACTION_LIMIT, ACTION_LIMIT)
        self.x_before = task.forward_position(lane.qpos, lane.torso_xpos).copy()
        if out.observations is not None:
            out.observations[r, t] = self.obs
            out.actions[r, t] = self.action
            out.qpos[r, t], out.qvel[r, t] = lane.qpos, lane.qvel

    def physics(self) -> None:
        if self.active.any():
            self.lane.step(self.action, self.active)

    def post(self, t: int) -> None:
        lane, task, active = self.lane, self.lane.task, self.active
        lane.post_step(active)
        qpos, qvel = lane.qpos, lane.qvel
        healthy = task.healthy(np, qpos, qvel)
        x_after = task.forward_position(qpos, lane.torso_xpos)
        reward = task.reward(np, self.x_before, x_after, self.action, healthy, lane.cfrc_ext)
        self.obs = task.observe(np, qpos, qvel, lane.cfrc_ext)
        reward = np.where(active, reward, 0.0)
        self.returns += reward
        self.lengths += active
        if self.out.rewards is not None:
            self.out.rewards[self.lane.rows, t] = reward
        term = task.terminated(np, healthy)
        self.terminated |= active & term
        active &= ~term


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
    The run stops when no env is active; every step it takes draws noise for all B envs in env order.
    """
    B, m = batch.n_envs, batch.model
    policy_index = np.asarray(policy_index)
    std = np.exp(params["log_std"])[policy_index]
    obs = batch.reset(qpos0, qvel0)
    out = Rollout(np.zeros(B), np.zeros(B, int), np.zeros(B, bool))
    if record:
        out.observations = np.zeros((B, horizon, obs.shape[-1]), np.float32)
        out.actions = np.zeros((B, horizon, m.nu), np.float32)
        out.rewards = np.zeros((B, horizon), np.float32)
        out.qpos = np.zeros((B, horizon, m.nq))
        out.qvel = np.zeros((B, horizon, m.nv))
    runs = [_LaneRun(lane, params, policy_index[lane.rows], std[lane.rows], obs[lane.rows], out)
            for lane in batch.lanes]
    waiting = []  # lanes whose actions at step t wait until it is known whether step t happens

    def prepare(t: int, k: int) -> bool:
        """Lane k's Python work before its physics at step t; False when no env is active at step t.

        Step t happens when any env is active after step t - 1. Lanes after k may not know yet, so
        an idle lane k defers its actions (and its share of the noise) to the first lane that does.
        """
        if t > 0:
            runs[k].post(t - 1)
        waiting.append(k)
        if any(runs[j].active.any() for j in range(k + 1)):
            for j in waiting:
                runs[j].act(t, action_rng)
            waiting.clear()
        return k < len(runs) - 1 or not waiting

    order = [(t, k) for t in range(horizon) for k in range(len(runs))]
    going = bool(order) and prepare(*order[0])
    for i, (t, k) in enumerate(order):
        if not going:
            break
        if i + 1 == len(order):
            runs[k].physics()
            for run in runs:
                run.post(horizon - 1)
        elif batch._helper is not None:  # the next lane's Python work runs while this lane's physics does
            pending = batch._helper.submit(prepare, *order[i + 1])
            runs[k].physics()
            going = pending.result()
        else:
            runs[k].physics()
            going = prepare(*order[i + 1])
    batch._gather()
    out.final_qpos, out.final_qvel = batch.qpos.copy(), batch.qvel.copy()
    return out
