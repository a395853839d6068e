"""Native backend: batches of CPU MuJoCo simulations stepped on MuJoCo's own thread pool.

The environments live in ``mujoco.batch.Batch`` objects: each environment's state row holds all
that ``mj_step`` carries from one step to the next (solver warm start included), so results equal
Gymnasium's ``MujocoEnv`` to the bit, and one call steps many environments with the GIL released.
Ant observes ``cfrc_ext`` after ``mj_rnePostConstraint`` on the data ``mj_step`` left behind, so its
environments are state rows stepped in turn on one ``MjData`` per lane, by ``mj_step`` in a loop that
releases the GIL.

``run_policies`` evaluates a whole batch of policies at once (one batched matmul over P policies per
control step). With more than one thread and enough environments they are split into two *lanes*,
each its own batch on its share of the threads, run side by side by their own Python threads: while
one lane's physics runs (GIL released), the other lane's policies, observations and records are computed,
so that no core waits for Python. Each row is computed as without lanes and the action noise of a
step is drawn for all environments at once, in step order, so the results are the same to the bit.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mujoco
import mujoco.batch
import numpy as np

from evaluators.policy import ACTION_LIMIT, BatchedPolicies, portable_exp
from evaluators.tasks import MAX_EPISODE_STEPS, Task

LANE_MIN_ENVS = 8  # two lanes from 2 * LANE_MIN_ENVS environments on
REWARD_CHUNK = 64  # steps whose rewards are computed together


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _BatchLane:
    """The environments ``rows`` of a NativeBatch, simulated by one ``mujoco.batch.Batch``."""

    def __init__(self, task: Task, model: mujoco.MjModel, rows: slice, n_threads: int):
        self.rows, self.task = rows, task
        n = rows.stop - rows.start
        self.sim = mujoco.batch.Batch(model, n, nthread=n_threads)
        self.qpos, self.qvel, self.ctrl = (self.sim.bind(f) for f in ("qpos", "qvel", "ctrl"))
        self.torso_xpos = self.sim.bind("xpos")[:, 1] if task.position_from_torso else np.zeros((n, 3))
        self.cfrc_ext = np.zeros((n, model.nbody, 6))

    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Gymnasium's reset of envs ``ids`` (sorted): mj_resetData, set the state, mj_forward."""
        self.sim.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[ids] = qpos
        self.qvel[ids] = qvel
        self.sim.forward(ids)

    def step(self, actions: np.ndarray, active: np.ndarray | None) -> None:
        """One control step of the active envs (None: all); the GIL is released while the physics runs."""
        if active is None:
            self.ctrl[:] = actions
        else:
            np.copyto(self.ctrl, actions, where=active[:, None])
        self.sim.step(active, nstep=self.task.frame_skip)


class _RowLane:
    """The environments ``rows`` as state rows stepped in turn on one ``MjData`` (``mj_step`` releases the GIL).

    For Ant, which observes ``cfrc_ext`` as ``mj_rnePostConstraint`` computes it on the data ``mj_step``
    left behind: a ``mujoco.batch`` would have to copy each environment's whole ``MjData`` out every
    step to give it. A row holds what ``mj_step`` carries from one step to the next (time, qpos, qvel,
    act, the solver's warm start); the other inputs (applied forces, mocap, equality switches) are never
    written, and the control is set before every step. So the results equal one MjData per
    environment to the bit, as ``mujoco.batch`` does, while the MjData stays in the core's cache.
    """

    STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS | mujoco.mjtState.mjSTATE_WARMSTART

    def __init__(self, task: Task, model: mujoco.MjModel, rows: slice):
        self.rows, self.task, self.model = rows, task, model
        n = rows.stop - rows.start
        self.data = mujoco.MjData(model)
        self.state = np.zeros((n, mujoco.mj_stateSize(model, self.STATE)))
        qpos_at = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_TIME)  # a row: time, qpos, qvel, ...
        self.qpos = self.state[:, qpos_at:qpos_at + model.nq]
        self.qvel = self.state[:, qpos_at + model.nq:qpos_at + model.nq + model.nv]
        self.torso_xpos, self.cfrc_ext = np.zeros((n, 3)), np.zeros((n, model.nbody, 6))
        self._rows = list(self.state)  # row views, made once

    def reset(self, ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        m, d = self.model, self.data
        for k, i in enumerate(ids):
            mujoco.mj_resetData(m, d)
            d.qpos[:], d.qvel[:] = qpos[k], qvel[k]
            mujoco.mj_forward(m, d)
            mujoco.mj_getState(m, d, self._rows[i], self.STATE)
            self.torso_xpos[i], self.cfrc_ext[i] = d.xpos[1], d.cfrc_ext

    def step(self, actions: np.ndarray, active: np.ndarray | None) -> None:
        m, d, frame_skip, spec, rows = self.model, self.data, self.task.frame_skip, self.STATE, self._rows
        ctrl, d_torso, d_cfrc = d.ctrl, d.xpos[1], d.cfrc_ext
        torso_xpos, cfrc_ext = self.torso_xpos, self.cfrc_ext
        envs = range(len(rows)) if active is None else np.flatnonzero(active).tolist()
        for i in envs:  # Ant's Python per env-step
            mujoco.mj_setState(m, d, rows[i], spec)
            ctrl[:] = actions[i]
            mujoco.mj_step(m, d, frame_skip)
            mujoco.mj_rnePostConstraint(m, d)
            mujoco.mj_getState(m, d, rows[i], spec)
            torso_xpos[i], cfrc_ext[i] = d_torso, d_cfrc


class NativeBatch:
    """``n_envs`` independent copies of ``task``; ``reset`` and ``step`` act on all (or a mask).

    The envs are split into ``lanes`` run side by side, each on its own Python thread. Default: one
    lane per LANE_MIN_ENVS envs, at most 2 lanes of ``mujoco.batch`` (each on half the threads) or, for
    tasks that observe contact forces, one state-row lane per thread.
    """

    def __init__(self, task: Task, n_envs: int, n_threads: int | None = None, lanes: int | None = None):
        self.task = task
        self.model = task.load_model()
        self.n_envs = n_envs
        n_threads = max(1, min(n_threads or default_threads(), n_envs))
        per_env = task.uses_contact_forces
        if lanes is None:
            lanes = max(1, min(n_threads if per_env else 2, n_threads, n_envs // LANE_MIN_ENVS))
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        cuts = np.linspace(0, n_envs, lanes + 1).round().astype(int)
        rows = [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        self.lanes = [_RowLane(task, self.model, r) if per_env else
                      _BatchLane(task, self.model, r, max(1, n_threads // lanes)) for r in rows]
        self._helper = ThreadPoolExecutor(len(self.lanes) - 1) if len(self.lanes) > 1 else None
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

    def _each_lane(self, work) -> list:
        """``work(lane)`` for every lane, side by side on the lanes' own Python threads."""
        others = [self._helper.submit(work, lane) for lane in self.lanes[1:]] if self._helper else []
        first = [work(self.lanes[0])] if self.lanes else []
        return first + [f.result() for f in others]

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

        self._each_lane(lambda lane: lane.step(actions[lane.rows], active[lane.rows]))
        self._gather()
        x_after = task.forward_position(self.qpos, self.torso_xpos)
        healthy = task.healthy(np, self.qpos, self.qvel)
        reward = task.reward(np, x_before, x_after, actions, healthy, task.contact_cost(np, self.cfrc_ext))
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


class _Noise:
    """Each step's action noise for all B envs, drawn once and in step order by the first lane to need it.

    Drawn this way the generator yields what one loop over all envs would draw: a step is reached only
    by a lane with active envs, and a lane reaches step t + 1 only after step t.
    """

    def __init__(self, rng: np.random.Generator | None, shape: tuple[int, int]):
        self.rng, self.shape, self.drawn, self.lock = rng, shape, {}, threading.Lock()

    def at(self, t: int) -> np.ndarray | None:
        if self.rng is None:
            return None
        with self.lock:
            if t not in self.drawn:
                self.drawn[t] = self.rng.standard_normal(self.shape)
            return self.drawn[t]


class _LaneRun:
    """One lane's part of ``run_policies``: policies, physics and observations of its envs, step by step.

    A step does only what the next step needs. What the rewards need (forward positions, actions,
    health, Ant's contact cost) is kept for REWARD_CHUNK steps at a time, and their rewards and returns
    are computed together, with the same arithmetic per element and the returns summed in step order.
    Arrays of the whole run (``out``) are written through this lane's rows only, so lanes never touch
    the same memory.
    """

    def __init__(self, lane: _BatchLane | _RowLane, params, policy_index, std, obs, out: Rollout, horizon: int):
        self.lane, self.std, self.obs, self.out = lane, std, obs, out
        present, policy_index = np.unique(policy_index, return_inverse=True)
        self.policies = BatchedPolicies({k: v[present] for k, v in params.items()})
        # Envs are laid out as a (P, width) grid so one matmul evaluates every policy at once; a policy's
        # spare rows repeat one of its envs.
        n, P = len(policy_index), len(present)
        width = max(1, int(np.bincount(policy_index, minlength=P).max()))
        source, cell = np.zeros((P, width), int), np.zeros(n, int)
        for p in range(P):
            members = np.flatnonzero(policy_index == p)
            cell[members] = p * width + np.arange(len(members))
            source[p] = members[np.minimum(np.arange(width), len(members) - 1)]
        self.source, self.cell = source.ravel(), cell
        self.grid = np.zeros((P, width, obs.shape[-1]))
        chunk = min(horizon, REWARD_CHUNK)
        self.actions = np.zeros((chunk, n, self.policies.act_dim))
        self.positions = np.zeros((chunk + 1, n))
        self.healthy = np.ones((chunk, n), bool)
        self.contact_cost = np.zeros((chunk, n)) if lane.task.uses_contact_forces else None
        r = lane.rows
        self.returns, self.lengths, self.terminated = out.returns[r], out.lengths[r], out.terminated[r]
        self.active = np.ones(n, bool)

    def run(self, horizon: int, noise: _Noise) -> None:
        lane, task, out, r, active = self.lane, self.lane.task, self.out, self.lane.rows, self.active
        recording = out.observations is not None
        checks_health = task.terminates or task.healthy_reward != 0
        grid_rows = self.grid.reshape(-1, self.grid.shape[-1])
        chunk = len(self.actions)
        first = taken = 0  # the current chunk's first step, the steps taken
        for t in range(horizon):
            if task.terminates and not active.any():
                break
            i = t - first
            np.take(self.obs, self.source, axis=0, out=grid_rows)
            mean = self.policies.mean(self.grid)
            np.take(mean.reshape(-1, mean.shape[-1]), self.cell, axis=0, out=self.actions[i])
            action = self.actions[i]
            step_noise = noise.at(t)
            if step_noise is not None:
                action += self.std * step_noise[r]
            np.minimum(np.maximum(action, -ACTION_LIMIT, out=action), ACTION_LIMIT, out=action)
            self.positions[i] = task.forward_position(lane.qpos, lane.torso_xpos)
            if recording:
                rows = np.flatnonzero(active) + r.start
                out.observations[rows, t] = self.obs[active]
                out.actions[rows, t] = action[active]
                out.qpos[rows, t], out.qvel[rows, t] = lane.qpos[active], lane.qvel[active]
            lane.step(action, active if task.terminates else None)  # None: all, without a mask's cost
            taken = t + 1
            self.obs = task.observe(np, lane.qpos, lane.qvel, lane.cfrc_ext)
            if self.contact_cost is not None:
                self.contact_cost[i] = task.contact_cost(np, lane.cfrc_ext)
            if checks_health:
                self.healthy[i] = healthy = task.healthy(np, lane.qpos, lane.qvel)
            if task.terminates:
                self.lengths += active
                term = task.terminated(np, healthy)
                self.terminated |= active & term
                active &= ~term
            if i == chunk - 1:
                self._rewards(first, chunk)
                first = taken
        self._rewards(first, taken - first)
        if not task.terminates:
            self.lengths[:] = taken

    def _rewards(self, first: int, steps: int) -> None:
        """Rewards of steps ``first .. first + steps - 1``, added to the returns; zero after termination."""
        if steps == 0:
            return
        lane, task = self.lane, self.lane.task
        self.positions[steps] = task.forward_position(lane.qpos, lane.torso_xpos)
        contact_cost = None if self.contact_cost is None else self.contact_cost[:steps]
        actions = self.actions[:steps]
        rewards = task.reward(np, self.positions[:steps], self.positions[1:steps + 1], actions,
                              self.healthy[:steps], contact_cost)
        if task.terminates:
            rewards = np.where(np.arange(first, first + steps)[:, None] < self.lengths, rewards, 0.0)
        for step_rewards in rewards:
            self.returns += step_rewards
        if self.out.rewards is not None:
            self.out.rewards[lane.rows, first:first + steps] = rewards.T


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
    Gaussian, otherwise the mean action is taken. Envs stop at termination: their records after it
    stay zero. The run stops when no env is active; every step it takes draws noise for all B envs
    in env order.
    """
    B, m = batch.n_envs, batch.model
    policy_index = np.asarray(policy_index)
    std = portable_exp(params["log_std"])[policy_index]
    obs = batch.reset(qpos0, qvel0)
    out = Rollout(np.zeros(B), np.zeros(B, int), np.zeros(B, bool))
    if record:
        out.observations = np.zeros((B, horizon, obs.shape[-1]), np.float32)
        out.actions = np.zeros((B, horizon, m.nu), np.float32)
        out.rewards = np.zeros((B, horizon), np.float32)
        out.qpos = np.zeros((B, horizon, m.nq))
        out.qvel = np.zeros((B, horizon, m.nv))
    noise = _Noise(action_rng, (B, m.nu))
    runs = {id(lane): _LaneRun(lane, params, policy_index[r], std[r], obs[r], out, horizon)
            for lane in batch.lanes for r in [lane.rows]}
    batch._each_lane(lambda lane: runs[id(lane)].run(horizon, noise))
    batch._gather()
    out.final_qpos, out.final_qvel = batch.qpos.copy(), batch.qvel.copy()
    return out
