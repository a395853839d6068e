"""The four locomotion tasks, defined once with Gymnasium v5 semantics.

Each task is data (model file, frame skip, reward weights, reset noise) plus three pure functions
written against an array module ``xp`` (numpy for the native backend, jax.numpy for MJX), so the
two backends share one definition of observation, reward and termination. Arrays carry any number
of leading batch dimensions.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import mujoco
import numpy as np

from evaluators.errors import SuiteError

MAX_EPISODE_STEPS = 1000


def _gymnasium_asset(name: str) -> str:
    import gymnasium

    return os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", name)


def _hopper_healthy(xp, qpos, qvel):
    state = xp.concatenate([qpos, qvel], axis=-1)[..., 2:]
    z, angle = qpos[..., 1], qpos[..., 2]
    return (
        xp.all((state > -100.0) & (state < 100.0), axis=-1)
        & (z > 0.7)
        & (angle > -0.2)
        & (angle < 0.2)
    )


def _walker_healthy(xp, qpos, qvel):
    z, angle = qpos[..., 1], qpos[..., 2]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


def _ant_healthy(xp, qpos, qvel):
    finite = xp.all(xp.isfinite(qpos), axis=-1) & xp.all(xp.isfinite(qvel), axis=-1)
    z = qpos[..., 2]
    return finite & (z >= 0.2) & (z <= 1.0)


def _always_healthy(xp, qpos, qvel):
    return xp.ones(qpos.shape[:-1], dtype=bool)


@dataclass(frozen=True)
class Task:
    name: str
    gym_id: str
    xml_file: str
    frame_skip: int
    ctrl_cost_weight: float
    healthy_reward: float
    terminates: bool
    reset_noise_scale: float
    qvel_noise: str  # "uniform" (Hopper, Walker2d) or "normal" (HalfCheetah, Ant)
    skipped_qpos: int  # leading qpos entries excluded from the observation
    qvel_clip: float | None
    healthy_fn: Callable
    contact_cost_weight: float = 0.0
    uses_contact_forces: bool = False  # Ant: cfrc_ext enters observation and reward
    position_from_torso: bool = False  # Ant measures forward motion on the torso body's xpos

    # -- model -----------------------------------------------------------------------------
    def load_model(self) -> mujoco.MjModel:
        """Gymnasium's own model file, compiled exactly as Gymnasium does it."""
        ignored: list[str] = []  # HalfCheetah's deprecated `settotalmass` (still applied) would warn on every load
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(ignored.append)
        try:
            model = mujoco.MjModel.from_xml_path(_gymnasium_asset(self.xml_file))
        finally:
            mujoco.set_mju_user_warning(previous)
        for message in ignored:
            if "settotalmass" not in message:
                warnings.warn(f"MuJoCo: {message}", stacklevel=2)
        return model

    @property
    def dt(self) -> float:
        return _model_timestep(self) * self.frame_skip

    # -- shared semantics ------------------------------------------------------------------
    def forward_position(self, qpos, torso_xpos):
        """x coordinate whose change over a control step is the forward velocity."""
        return torso_xpos[..., 0] if self.position_from_torso else qpos[..., 0]

    def observe(self, xp, qpos, qvel, cfrc_ext):
        position = qpos[..., self.skipped_qpos :]
        velocity = qvel if self.qvel_clip is None else xp.clip(qvel, -self.qvel_clip, self.qvel_clip)
        parts = [position, velocity]
        if self.uses_contact_forces:
            forces = xp.clip(cfrc_ext[..., 1:, :], -1.0, 1.0)
            parts.append(forces.reshape(forces.shape[:-2] + (-1,)))
        return xp.concatenate(parts, axis=-1)

    def healthy(self, xp, qpos, qvel):
        return self.healthy_fn(xp, qpos, qvel)

    def contact_cost(self, xp, cfrc_ext):
        """Ant's penalty on the external contact forces of all bodies (clipped to ±1); 0 for the others."""
        if not self.uses_contact_forces:
            return 0.0
        forces = xp.clip(cfrc_ext, -1.0, 1.0)
        return self.contact_cost_weight * xp.sum(forces * forces, axis=(-2, -1))

    def reward(self, xp, x_before, x_after, action, healthy, contact_cost):
        """A control step's reward; ``contact_cost`` is ``self.contact_cost`` of the state after it."""
        forward = (x_after - x_before) / self.dt
        reward = forward + self.healthy_reward * healthy - self.ctrl_cost_weight * xp.sum(
            action * action, axis=-1
        )
        if self.uses_contact_forces:
            reward = reward - contact_cost
        return reward

    def terminated(self, xp, healthy):
        return ~healthy if self.terminates else xp.zeros_like(healthy)

    def sample_initial_state(self, model: mujoco.MjModel, rng: np.random.Generator):
        """Gymnasium v5 ``reset_model`` noise around the model's initial pose."""
        s = self.reset_noise_scale
        qpos = model.qpos0 + rng.uniform(-s, s, size=model.nq)
        if self.qvel_noise == "uniform":
            qvel = rng.uniform(-s, s, size=model.nv)
        else:
            qvel = s * rng.standard_normal(model.nv)
        return qpos, qvel

    def initial_states(self, n: int, seed: int, first: int = 0):
        """Start states ``first .. first+n-1``; state i depends only on (seed, i)."""
        model = _model_cache(self)
        pairs = [self.sample_initial_state(model, np.random.default_rng([seed, i]))
                 for i in range(first, first + n)]
        return np.stack([p for p, _ in pairs]), np.stack([v for _, v in pairs])

    @property
    def obs_dim(self) -> int:
        model = _model_cache(self)
        dim = model.nq - self.skipped_qpos + model.nv
        if self.uses_contact_forces:
            dim += (model.nbody - 1) * 6
        return dim

    @property
    def act_dim(self) -> int:
        return _model_cache(self).nu


_MODELS: dict[str, mujoco.MjModel] = {}


def _model_cache(task: Task) -> mujoco.MjModel:
    if task.name not in _MODELS:
        _MODELS[task.name] = task.load_model()
    return _MODELS[task.name]


def _model_timestep(task: Task) -> float:
    return float(_model_cache(task).opt.timestep)


TASKS: dict[str, Task] = {
    "hopper": Task(
        name="hopper", gym_id="Hopper-v5", xml_file="hopper.xml", frame_skip=4,
        ctrl_cost_weight=1e-3, healthy_reward=1.0, terminates=True, reset_noise_scale=5e-3,
        qvel_noise="uniform", skipped_qpos=1, qvel_clip=10.0, healthy_fn=_hopper_healthy,
    ),
    "walker2d": Task(
        name="walker2d", gym_id="Walker2d-v5", xml_file="walker2d_v5.xml", frame_skip=4,
        ctrl_cost_weight=1e-3, healthy_reward=1.0, terminates=True, reset_noise_scale=5e-3,
        qvel_noise="uniform", skipped_qpos=1, qvel_clip=10.0, healthy_fn=_walker_healthy,
    ),
    "halfcheetah": Task(
        name="halfcheetah", gym_id="HalfCheetah-v5", xml_file="half_cheetah.xml", frame_skip=5,
        ctrl_cost_weight=0.1, healthy_reward=0.0, terminates=False, reset_noise_scale=0.1,
        qvel_noise="normal", skipped_qpos=1, qvel_clip=None, healthy_fn=_always_healthy,
    ),
    "ant": Task(
        name="ant", gym_id="Ant-v5", xml_file="ant.xml", frame_skip=5,
        ctrl_cost_weight=0.5, healthy_reward=1.0, terminates=True, reset_noise_scale=0.1,
        qvel_noise="normal", skipped_qpos=2, qvel_clip=None, healthy_fn=_ant_healthy,
        contact_cost_weight=5e-4, uses_contact_forces=True, position_from_torso=True,
    ),
}


class UnknownTaskError(SuiteError):
    pass


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
