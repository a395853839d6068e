"""The native backend's fast paths (batched physics, two lanes, a helper thread) change no result.

``reference_run`` is the plain algorithm: one ``MjData`` per env stepped in a Python loop, the
policies of all envs evaluated in one call per control step, noise for all envs drawn at once, the
reward of every step computed after it. ``run_policies`` must reproduce it bit for bit (datasets are
content-hashed): returns, lengths, terminations, every recorded array and the generator's state
afterwards.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from evaluators import native
from evaluators.native import LANE_MIN_ENVS, NativeBatch, run_policies
from evaluators.policy import ACTION_LIMIT, OBS_CLIP, BatchedPolicies, exact_grids, init_policy, policy_mean, portable_exp, stack
from evaluators.tasks import TASKS


def reference_run(task, params, policy_index, qpos0, qvel0, horizon, action_rng):
    model = task.load_model()
    B, P = len(policy_index), len(params["log_std"])
    datas = [mujoco.MjData(model) for _ in range(B)]
    qpos, qvel = np.zeros((B, model.nq)), np.zeros((B, model.nv))
    cfrc, torso = np.zeros((B, model.nbody, 6)), np.zeros((B, 3))

    def gather(i):
        d = datas[i]
        qpos[i], qvel[i], cfrc[i], torso[i] = d.qpos, d.qvel, d.cfrc_ext, d.xpos[1]

    for i, d in enumerate(datas):
        mujoco.mj_resetData(model, d)
        d.qpos[:], d.qvel[:] = qpos0[i], qvel0[i]
        mujoco.mj_forward(model, d)
        gather(i)
    slot = np.zeros(B, int)
    for p in range(P):
        members = np.flatnonzero(policy_index == p)
        slot[members] = np.arange(len(members))
    grid = np.zeros((P, int(np.bincount(policy_index, minlength=P).max()), task.obs_dim))
    std = portable_exp(params["log_std"])[policy_index]
    active, returns, lengths, terminated = np.ones(B, bool), np.zeros(B), np.zeros(B, int), np.zeros(B, bool)
    rec = {k: [] for k in ("obs", "act", "rew", "qpos", "qvel")}
    for _ in range(horizon):
        obs = task.observe(np, qpos, qvel, cfrc)
        grid[policy_index, slot] = obs
        mean = BatchedPolicies(params).mean(grid)[policy_index, slot].copy()
        action = np.clip(mean + std * action_rng.standard_normal(mean.shape), -ACTION_LIMIT, ACTION_LIMIT)
        live = active[:, None]  # an env's records after its termination stay zero
        rec["obs"].append(np.where(live, obs, 0).astype(np.float32))
        rec["act"].append(np.where(live, action, 0).astype(np.float32))
        rec["qpos"].append(np.where(live, qpos, 0))
        rec["qvel"].append(np.where(live, qvel, 0))
        x_before = task.forward_position(qpos, torso).copy()
        for i in np.flatnonzero(active):
            datas[i].ctrl[:] = action[i]
            mujoco.mj_step(model, datas[i], task.frame_skip)
            if task.uses_contact_forces:
                mujoco.mj_rnePostConstraint(model, datas[i])
            gather(i)
        healthy = task.healthy(np, qpos, qvel)
        reward = task.reward(np, x_before, task.forward_position(qpos, torso), action, healthy,
                             task.contact_cost(np, cfrc))
        reward = np.where(active, reward, 0.0)
        rec["rew"].append(reward.astype(np.float32))
        returns += reward
        lengths += active
        term = task.terminated(np, healthy)
        terminated |= active & term
        active &= ~term
        if not active.any():
            break
    recorded = {k: np.stack(v, axis=1) for k, v in rec.items()}
    return returns, lengths, terminated, recorded, qpos, qvel


def policies(task, n, seed):
    return stack([init_policy(np.random.default_rng([seed, i]), task.obs_dim, task.act_dim, out_scale=1.0)
                  for i in range(n)])


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("n_envs", [5, 2 * LANE_MIN_ENVS + 3])
@pytest.mark.parametrize("layout", ["random", "sorted"])
@pytest.mark.parametrize("reward_chunk", [7, 20, native.REWARD_CHUNK])
def test_run_policies_reproduces_the_reference_bit_for_bit(name, n_envs, layout, reward_chunk, monkeypatch):
    """A random policy per env (as datasets do); sorted by policy (as scoring does), each lane has its own.

    Rewards computed 7 steps at a time (terminations inside a chunk), 20 (chunks end with the horizon)
    and as shipped (one partial chunk)."""
    monkeypatch.setattr(native, "REWARD_CHUNK", reward_chunk)
    task, horizon = TASKS[name], 40
    params = policies(task, 3, seed=4)
    policy_index = np.random.default_rng(1).integers(3, size=n_envs)
    if layout == "sorted":
        policy_index = np.sort(policy_index)
    qpos0, qvel0 = task.initial_states(n_envs, seed=2)
    want_rng, got_rng = np.random.default_rng(9), np.random.default_rng(9)
    returns, lengths, terminated, rec, qpos, qvel = reference_run(task, params, policy_index, qpos0, qvel0,
                                                                  horizon, want_rng)
    with NativeBatch(task, n_envs, n_threads=2) as batch:
        assert len(batch.lanes) == (2 if n_envs >= 2 * LANE_MIN_ENVS else 1)
        got = run_policies(batch, params, policy_index, qpos0, qvel0, horizon, got_rng, record=True)
    steps = rec["rew"].shape[1]
    np.testing.assert_array_equal(got.returns, returns)
    np.testing.assert_array_equal(got.lengths, lengths)
    np.testing.assert_array_equal(got.terminated, terminated)
    for key, field in [("obs", "observations"), ("act", "actions"), ("rew", "rewards"), ("qpos", "qpos"),
                       ("qvel", "qvel")]:
        recorded = getattr(got, field)
        np.testing.assert_array_equal(recorded[:, :steps], rec[key], err_msg=field)
        assert not recorded[:, steps:].any(), f"{field} after the last step must stay zero"
    np.testing.assert_array_equal(got.final_qpos, qpos)
    np.testing.assert_array_equal(got.final_qvel, qvel)
    assert got_rng.bit_generator.state == want_rng.bit_generator.state


@pytest.mark.parametrize("falls_first", [0, 1])
def test_early_end_when_every_env_terminates(falls_first):
    """Hopper with strong random policies falls within the horizon: the run stops, as the reference does.

    One lane starts too low and is done after its first step while the other lane goes on.
    """
    task, n_envs, horizon = TASKS["hopper"], 2 * LANE_MIN_ENVS + 1, 400
    params = policies(task, 2, seed=0)
    policy_index = np.arange(n_envs) % 2
    qpos0, qvel0 = task.initial_states(n_envs, seed=3)
    want_rng, got_rng = np.random.default_rng(5), np.random.default_rng(5)
    with NativeBatch(task, n_envs, n_threads=2) as batch:
        low = batch.lanes[falls_first].rows
        qpos0[low, 1] = 0.5
        got = run_policies(batch, params, policy_index, qpos0, qvel0, horizon, got_rng)
    returns, lengths, *_ = reference_run(task, params, policy_index, qpos0, qvel0, horizon, want_rng)
    assert lengths.max() < horizon, "the test needs every env to terminate"
    assert (lengths[low] == 1).all() and lengths.max() > 1
    np.testing.assert_array_equal(got.returns, returns)
    np.testing.assert_array_equal(got.lengths, lengths)
    assert got_rng.bit_generator.state == want_rng.bit_generator.state


def test_deterministic_runs_and_empty_batch():
    task = TASKS["walker2d"]
    params = policies(task, 2, seed=1)
    qpos0, qvel0 = task.initial_states(20, seed=0)
    idx = np.arange(20) % 2
    with NativeBatch(task, 20) as batch:
        first = run_policies(batch, params, idx, qpos0, qvel0, 30)
        again = run_policies(batch, params, idx, qpos0, qvel0, 30)
    with NativeBatch(task, 20, n_threads=1) as batch:
        single = run_policies(batch, params, idx, qpos0, qvel0, 30)
    for other in (again, single):
        np.testing.assert_array_equal(first.returns, other.returns)
        np.testing.assert_array_equal(first.final_qpos, other.final_qpos)
    with NativeBatch(task, 0) as batch:
        empty = run_policies(batch, params, np.zeros(0, int), qpos0[:0], qvel0[:0], 30, record=True)
    assert empty.returns.shape == (0,) and empty.observations.shape == (0, 30, task.obs_dim)


def test_partial_reset_and_masked_step_of_a_two_lane_batch():
    """PPO's use: step with a mask, reset some envs in any order; as the same envs stepped alone."""
    task, n = TASKS["ant"], 2 * LANE_MIN_ENVS
    qpos, qvel = task.initial_states(n, seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (n, task.act_dim))
    active = np.arange(n) % 3 != 0
    which = np.array([n - 1, 2, n // 2])
    with NativeBatch(task, n) as batch, NativeBatch(task, 1) as alone:
        assert len(batch.lanes) == 2
        batch.reset(qpos, qvel)
        batch.step(actions, active)
        batch.reset(qpos[:3][::-1], qvel[:3][::-1], which)
        obs, reward, term = batch.step(actions)
        for i in range(n):
            j = {n - 1: 2, 2: 1, n // 2: 0}.get(i)
            if j is None:
                alone.reset(qpos[i:i + 1], qvel[i:i + 1])
                if active[i]:
                    alone.step(actions[i:i + 1])
            else:
                alone.reset(qpos[j:j + 1], qvel[j:j + 1])
            o, r, t = alone.step(actions[i:i + 1])
            np.testing.assert_array_equal(obs[i], o[0])
            assert reward[i] == r[0] and term[i] == t[0]


@pytest.mark.parametrize("act_dim", [1, 3, 6, 8])
def test_a_policy_row_does_not_depend_on_its_batch_mates(act_dim):
    """The same observation gets the same action bits in any grid: any row count, any position."""
    rng = np.random.default_rng(act_dim)
    params = policies_of(rng, obs_dim=17, act_dim=act_dim, n=3)
    obs = rng.standard_normal((3, 40, 17))
    whole = BatchedPolicies(params).mean(obs).copy()
    for n in (1, 2, 3, 5, 7, 13, 40):
        for start in (0, 3, 40 - n):
            part = BatchedPolicies(params).mean(np.ascontiguousarray(obs[:, start:start + n]))
            np.testing.assert_array_equal(part, whole[:, start:start + n], err_msg=f"{n} rows from {start}")


def policies_of(rng, obs_dim, act_dim, n):
    params = stack([init_policy(rng, obs_dim, act_dim, out_scale=1.0) for _ in range(n)])
    params["obs_mean"] = rng.standard_normal((n, obs_dim)).astype(np.float32)
    return params


def exact_mean(params: dict, p: int, obs: np.ndarray) -> np.ndarray:
    """Policy ``p``'s mean action for one observation with every dot product in Python's integers."""
    layers = sum(1 for k in params if k.startswith("w"))
    x = np.clip((obs - params["obs_mean"][p]) / params["obs_std"][p], -OBS_CLIP, OBS_CLIP)
    for i in range(layers):
        w, b = params[f"w{i}"][p:p + 1].astype(np.float64), params[f"b{i}"][p:p + 1].astype(np.float64)
        in_bits, w_bits = (int(v[0]) for v in exact_grids(w, b, OBS_CLIP if i == 0 else 1.0))
        x_int = [int(v) for v in np.rint(np.ldexp(x, in_bits))]
        w_int = np.rint(np.ldexp(w[0], w_bits)).astype(object)
        b_int = [int(v) for v in np.rint(np.ldexp(b[0], in_bits + w_bits))]
        y = np.array([float(sum(xi * int(wij) for xi, wij in zip(x_int, w_int[:, j])) + b_int[j])
                      for j in range(w.shape[-1])])
        x = np.ldexp(y, -(in_bits + w_bits))
        if i < layers - 1:
            x = np.tanh(x)
    return x


@pytest.mark.parametrize("weight_scale", [0.01, 1.0, 300.0])
def test_every_dot_product_is_exact(weight_scale):
    """The batched evaluation equals integer arithmetic, so no kernel, order or FMA can change a bit."""
    rng = np.random.default_rng(5)
    params = policies_of(rng, obs_dim=27, act_dim=8, n=3)
    for k in params:
        if k.startswith(("w", "b")):
            params[k] = (params[k] * weight_scale + rng.normal(0, 0.1 * weight_scale, params[k].shape)).astype(np.float32)
    obs = rng.standard_normal((3, 4, 27)) * 5
    obs[0, 0, 0] = 1e6  # clipped
    got = BatchedPolicies(params).mean(obs)
    for p in range(3):
        for n in range(4):
            np.testing.assert_array_equal(got[p, n], exact_mean(params, p, obs[p, n]), err_msg=f"policy {p} row {n}")
    float_mean = np.stack([policy_mean({k: v[p] for k, v in params.items()}, obs[p]) for p in range(3)])
    np.testing.assert_allclose(got, float_mean, rtol=0, atol=1e-5 * max(1.0, weight_scale))
