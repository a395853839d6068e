"""The backends simulate Gymnasium's v5 tasks: the same actions from the same state give the same
observations, rewards and terminations.

Actions are a smooth random sequence (AR(1) noise, stationary std 0.5, clipped to [-1, 1]), the kind
a policy produces; start states are the tasks' own reset distribution. Measured bounds (CPU):

- native vs Gymnasium's own environment (``gymnasium.make``): bit-identical over NATIVE_STEPS = 300
  control steps for every task, with the batch in one lane or two (Ant's reward differs by 2e-16:
  Gymnasium sums its terms in another order); asserted to NATIVE_ATOL = 1e-12.
- MJX in float64 (``jax.enable_x64``) vs native over MJX64_STEPS = 100 steps: max |error| 3.7e-6 for
  Ant (its contacts amplify round-off), 1.3e-8 HalfCheetah, <= 3e-12 Hopper and Walker2d; asserted to
  MJX64_ATOL = 1e-4. The two compute the same physics; no modelling difference is left.
- MJX in float32 (the default) vs native: contact-rich locomotion amplifies float32 rounding, so the
  trajectories agree for a task-dependent horizon and then drift apart. Worst max |obs error| / max
  |reward error| seen (the test's states and 20 others): hopper 1.1e-4 / 1.5e-5 over 50 steps,
  walker2d 1.0e-3 / 1.5e-4 over 25, halfcheetah 1.9e-3 / 1.3e-3 over 25, ant 8.9e-3 / 5.0e-4 over 10.
  Asserted over MJX32_STEPS with MJX32_OBS_ATOL = 2e-2 and MJX32_REWARD_ATOL = 5e-3, terminations
  identical. At twice those horizons single start states already drift apart by 1e-2 to 1.

MJX tests compile for tens of seconds per task on a CPU and are marked ``slow``
(run them with ``--run-slow`` or ``MPO_RUN_SLOW=1``); the rest of the file takes seconds.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pytest

from evaluators.native import NativeBatch, run_policies
from evaluators.policy import init_policy, stack
from evaluators.scoring import episode_returns
from evaluators.tasks import TASKS

NATIVE_STEPS = 300
NATIVE_ATOL = 1e-12
MJX64_STEPS = 100
MJX64_ATOL = 1e-4
MJX32_STEPS = {"hopper": 50, "walker2d": 25, "halfcheetah": 25, "ant": 10}
MJX32_OBS_ATOL = 2e-2
MJX32_REWARD_ATOL = 5e-3
SEEDS = (0, 1, 2)


class Trajectory(NamedTuple):
    obs0: np.ndarray  # (obs_dim,) observation after reset
    obs: np.ndarray  # (T, obs_dim) observation after each action
    rewards: np.ndarray  # (T,)
    terminated: np.ndarray  # (T,)


def smooth_actions(act_dim: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions, a = np.zeros((steps, act_dim)), np.zeros(act_dim)
    for t in range(steps):
        a = 0.9 * a + np.sqrt(1 - 0.9**2) * 0.5 * rng.standard_normal(act_dim)
        actions[t] = np.clip(a, -1.0, 1.0)
    return actions


def gymnasium_run(task, seed: int, actions: np.ndarray):
    """Gymnasium's env from its own reset: (qpos, qvel) of the start state and the trajectory."""
    import gymnasium

    env = gymnasium.make(task.gym_id)
    try:
        obs0, _ = env.reset(seed=seed)
        data = env.unwrapped.data
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        steps = [env.step(a)[:3] for a in actions]
    finally:
        env.close()
    obs, rewards, terminated = (np.array(x) for x in zip(*steps))
    return qpos, qvel, Trajectory(obs0, obs, rewards.astype(float), terminated.astype(bool))


def native_batch_run(task, qpos, qvel, actions, lanes: int = 1) -> list[Trajectory]:
    """Env i of one threaded batch from (qpos[i], qvel[i]) with actions[i] (B, T, act_dim)."""
    with NativeBatch(task, len(qpos), n_threads=2, lanes=lanes) as batch:
        obs0 = batch.reset(qpos, qvel)
        steps = [batch.step(actions[:, t]) for t in range(actions.shape[1])]
    obs, rewards, terminated = (np.stack(x, axis=1) for x in zip(*steps))
    return [Trajectory(obs0[i], obs[i], rewards[i], terminated[i]) for i in range(len(qpos))]


def mjx_run(task, qpos, qvel, actions) -> Trajectory:
    from evaluators.mjx_backend import mjx_reset, mjx_step_fn

    d, obs0 = mjx_reset(task, qpos, qvel)
    step = mjx_step_fn(task)
    out = []
    for a in actions:
        d, o, r, term = step(d, a)
        out.append((np.asarray(o, float), float(r), bool(term)))
    obs, rewards, terminated = (np.array(x) for x in zip(*out))
    return Trajectory(np.asarray(obs0, float), obs, rewards, terminated)


def assert_agree(a: Trajectory, b: Trajectory, obs_atol: float, reward_atol: float, what: str):
    np.testing.assert_allclose(a.obs0, b.obs0, rtol=0, atol=obs_atol, err_msg=f"{what}: reset observation")
    for t in range(len(a.rewards)):  # report the first step that disagrees
        np.testing.assert_allclose(a.obs[t], b.obs[t], rtol=0, atol=obs_atol,
                                   err_msg=f"{what}: obs, step {t}")
        assert abs(a.rewards[t] - b.rewards[t]) <= reward_atol, \
            f"{what}: reward at step {t}: {a.rewards[t]} vs {b.rewards[t]}"
        assert a.terminated[t] == b.terminated[t], f"{what}: terminated at step {t}"


def native_from_task_states(task, steps: int):
    """Start states from the task's reset distribution, actions, and the native trajectories."""
    qpos, qvel = task.initial_states(len(SEEDS), seed=0)
    actions = np.stack([smooth_actions(task.act_dim, steps, s) for s in SEEDS])
    return qpos, qvel, actions, native_batch_run(task, qpos, qvel, actions)


# -- native vs Gymnasium ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TASKS))
def test_native_matches_gymnasium(name):
    task = TASKS[name]
    actions = np.stack([smooth_actions(task.act_dim, NATIVE_STEPS, s) for s in SEEDS])
    starts, expected = zip(*[(gym[:2], gym[2]) for gym in
                             (gymnasium_run(task, s, actions[i]) for i, s in enumerate(SEEDS))])
    qpos, qvel = (np.stack(x) for x in zip(*starts))
    for lanes in (1, 2):
        for seed, got, want in zip(SEEDS, native_batch_run(task, qpos, qvel, actions, lanes), expected):
            assert_agree(got, want, NATIVE_ATOL, NATIVE_ATOL, f"{name} seed {seed}, {lanes} lane(s)")


# -- MJX input checks (no compilation) ----------------------------------------------------------

def _policies(task, n: int, seed: int = 0, out_scale: float = 0.5):
    return stack([init_policy(np.random.default_rng([seed, i]), task.obs_dim, task.act_dim,
                              out_scale=out_scale) for i in range(n)])


def test_mjx_rejects_bad_input():
    from evaluators.mjx_backend import MJXInputError, mjx_run_policies

    hopper, ant = TASKS["hopper"], TASKS["ant"]
    params = _policies(hopper, 2)
    qpos, qvel = hopper.initial_states(2, seed=0)
    idx = np.array([0, 1])
    cases = [
        (dict(horizon=0), "horizon must be an integer"),
        (dict(horizon=2.5), "horizon must be an integer"),
        (dict(policy_index=np.array([0, 2])), r"policy_index must lie in \[0, 2\)"),
        (dict(policy_index=np.array([[0, 1]])), "non-empty 1-D array of integers"),
        (dict(qpos0=qpos[:1]), "start states must have shapes"),
        (dict(params={k: v for k, v in params.items() if k != "log_std"}), "params lack log_std"),
        (dict(params={k: v[0] for k, v in params.items()}), "batch of policies"),
        (dict(params=dict(params, w1=params["w1"][:, 0])), "w1 are not stacked over P=2"),
        (dict(task=ant), "policies expect observations of size 11, ant has 105"),
        (dict(seed="0"), "seed must be an integer"),
    ]
    for change, message in cases:
        kwargs = dict(task=hopper, params=params, policy_index=idx, qpos0=qpos, qvel0=qvel,
                      horizon=10, seed=0)
        kwargs.update(change)
        with pytest.raises(MJXInputError, match=message):
            mjx_run_policies(**kwargs)
    with pytest.raises(MJXInputError, match="start states hold non-finite"):
        mjx_run_policies(hopper, params, idx, np.full_like(qpos, np.nan), qvel, horizon=10)


def test_persistent_cache_defaults_under_the_project_cache(monkeypatch, tmp_path):
    import jax

    from evaluators.mjx_backend import persistent_cache_dir

    monkeypatch.setenv("MPO_DISCOVER_CACHE", str(tmp_path))
    user_dir = jax.config.jax_compilation_cache_dir
    assert persistent_cache_dir() == (user_dir or os.path.join(str(tmp_path), "jax"))


# -- MJX vs native (slow: compiles) --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_mjx_float64_matches_native(name):
    import jax

    task = TASKS[name]
    qpos, qvel, actions, native = native_from_task_states(task, MJX64_STEPS)
    with jax.enable_x64(True):  # the backend clears JAX's caches when the precision changes
        for i, seed in enumerate(SEEDS):
            got = mjx_run(task, qpos[i], qvel[i], actions[i])
            assert_agree(got, native[i], MJX64_ATOL, MJX64_ATOL, f"{name} float64, start {seed}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_mjx_float32_matches_native_over_short_horizons(name):
    task = TASKS[name]
    qpos, qvel, actions, native = native_from_task_states(task, MJX32_STEPS[name])
    for i, seed in enumerate(SEEDS):
        got = mjx_run(task, qpos[i], qvel[i], actions[i])
        assert_agree(got, native[i], MJX32_OBS_ATOL, MJX32_REWARD_ATOL, f"{name} float32, start {seed}")


@pytest.mark.slow
def test_mjx_rollouts_match_native_and_compile_once():
    """Batched closed-loop rollouts agree with native; new policies of the same shape reuse the compile."""
    from evaluators.mjx_backend import compilation_count, mjx_run_policies

    task, horizon, episodes = TASKS["hopper"], MJX32_STEPS["hopper"], 2
    params = _policies(task, 2, seed=1)
    idx = np.repeat(np.arange(2), episodes)
    qpos, qvel = task.initial_states(episodes, seed=7)
    qpos, qvel = np.tile(qpos, (2, 1)), np.tile(qvel, (2, 1))

    got = mjx_run_policies(task, params, idx, qpos, qvel, horizon=horizon)
    with NativeBatch(task, len(idx)) as batch:
        want = run_policies(batch, params, idx, qpos, qvel, horizon)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(got.terminated, want.terminated)
    np.testing.assert_allclose(got.returns, want.returns, rtol=1e-3, atol=horizon * MJX32_REWARD_ATOL)

    compiled = compilation_count()
    new_params = _policies(task, 2, seed=2)
    mjx = episode_returns(task, new_params, episodes, seed=7, backend="mjx", horizon=horizon)
    assert compilation_count() == compiled, "new parameters of the same shape must not recompile"
    native = episode_returns(task, new_params, episodes, seed=7, backend="native", horizon=horizon)
    np.testing.assert_allclose(mjx, native, rtol=1e-3, atol=horizon * MJX32_REWARD_ATOL)
    assert not np.allclose(mjx.ravel(), got.returns), "the new parameters must be the ones used"


@pytest.mark.slow
def test_mjx_stochastic_rollouts_are_seeded():
    from evaluators.mjx_backend import mjx_episode_returns

    task = TASKS["hopper"]
    params, idx = _policies(task, 1, seed=3), np.zeros(2, int)
    qpos, qvel = task.initial_states(1, seed=0)
    qpos, qvel = np.tile(qpos, (2, 1)), np.tile(qvel, (2, 1))

    def returns(seed):
        return mjx_episode_returns(task, params, idx, qpos, qvel, horizon=10, deterministic=False, seed=seed)

    first, again, other = returns(0), returns(0), returns(1)
    np.testing.assert_array_equal(first, again)
    assert first[0] != first[1], "envs of one policy draw different action noise"
    assert not np.array_equal(first, other)
