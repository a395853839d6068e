"""PPO for the behaviour policies (the suite's data generators), on the native backend.

Rollouts run on ``NativeBatch`` with numpy policies; the update is one jit-compiled JAX function
(epochs x minibatches in ``lax.scan``). Observation and reward normalisation follow the usual
MuJoCo PPO recipe; the observation statistics are baked into each saved policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evaluators.native import NativeBatch, run_policies
from evaluators.policy import ACTION_LIMIT, OBS_CLIP, gaussian_log_prob, init_policy, policy_mean, stack
from evaluators.tasks import MAX_EPISODE_STEPS, Task


@dataclass(frozen=True)
class PPOConfig:
    total_steps: int = 3_000_000
    n_envs: int = 64
    n_steps: int = 64
    epochs: int = 10
    minibatches: int = 32
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    eval_every: int = 10  # iterations between snapshot evaluations
    eval_episodes: int = 8


class RunningMeanStd:
    def __init__(self, shape):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var, self.count = m2 / total, total

    @property
    def std(self):
        return np.sqrt(self.var + 1e-8)


@dataclass
class Snapshot:
    step: int
    eval_return: float
    params: dict


@dataclass
class PPOResult:
    snapshots: list[Snapshot] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (env steps, eval return)


def _normalised_net(params):
    """The policy/value nets see pre-normalised observations during training."""
    return {**params, "obs_mean": jnp.zeros_like(params["obs_mean"]), "obs_std": jnp.ones_like(params["obs_std"])}


def _make_update(cfg: PPOConfig, batch_size: int):
    mb = batch_size // cfg.minibatches
    n_updates = cfg.total_steps // batch_size
    schedule = optax.linear_schedule(cfg.lr, 0.0, n_updates * cfg.epochs * cfg.minibatches)
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(schedule, eps=1e-5))

    def loss_fn(nets, obs, act, logp_old, adv, ret):
        actor, critic = _normalised_net(nets["actor"]), _normalised_net(nets["critic"])
        mean = policy_mean(actor, obs, jnp)
        logp = gaussian_log_prob(mean, actor["log_std"], act, jnp)
        ratio = jnp.exp(logp - logp_old)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv).mean()
        value = policy_mean(critic, obs, jnp)[..., 0]
        return pg + cfg.value_coef * 0.5 * ((value - ret) ** 2).mean()

    @jax.jit
    def update(nets, opt_state, data, key):
        def epoch(carry, k):
            nets, opt_state = carry
            perm = jax.random.permutation(k, batch_size).reshape(cfg.minibatches, mb)

            def minibatch(carry, idx):
                nets, opt_state = carry
                grads = jax.grad(loss_fn)(nets, *(x[idx] for x in data))
                updates, opt_state = opt.update(grads, opt_state, nets)
                return (optax.apply_updates(nets, updates), opt_state), None

            return jax.lax.scan(minibatch, (nets, opt_state), perm)[0], None

        (nets, opt_state), _ = jax.lax.scan(epoch, (nets, opt_state), jax.random.split(key, cfg.epochs))
        return nets, opt_state

    return opt, update


def _value_np(critic, obs_n):
    return policy_mean({**critic, "obs_mean": 0.0, "obs_std": 1.0}, obs_n)[..., 0]


def train_ppo(task: Task, cfg: PPOConfig, seed: int, n_threads: int | None = None,
              on_progress: Callable[[int, float | None], None] | None = None) -> PPOResult:
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = task.obs_dim, task.act_dim
    actor = init_policy(rng, obs_dim, act_dim, cfg.hidden)
    critic = init_policy(rng, obs_dim, 1, cfg.hidden, out_scale=1.0)
    nets = jax.tree.map(jnp.asarray, {"actor": actor, "critic": critic})
    batch_size = cfg.n_envs * cfg.n_steps
    opt, update = _make_update(cfg, batch_size)
    opt_state = opt.init(nets)
    key = jax.random.PRNGKey(seed)

    obs_rms, ret_rms = RunningMeanStd(obs_dim), RunningMeanStd(())
    result = PPOResult()
    env = NativeBatch(task, cfg.n_envs, n_threads)
    eval_env = NativeBatch(task, cfg.eval_episodes, n_threads)
    start_counter = 0

    def new_starts(n):
        nonlocal start_counter
        q, v = task.initial_states(n, seed + 1, first=start_counter)
        start_counter += n
        return q, v

    def snapshot_params(actor_np):
        return {**actor_np, "obs_mean": obs_rms.mean.astype(np.float32),
                "obs_std": obs_rms.std.astype(np.float32)}

    def evaluate(actor_np, step):
        params = snapshot_params(actor_np)
        q, v = task.initial_states(cfg.eval_episodes, seed + 2)
        ret = run_policies(eval_env, stack([params]), np.zeros(cfg.eval_episodes, int), q, v).returns.mean()
        result.snapshots.append(Snapshot(step, float(ret), params))
        result.curve.append((step, float(ret)))
        return float(ret)

    obs = env.reset(*new_starts(cfg.n_envs))
    ep_len = np.zeros(cfg.n_envs, int)
    disc_ret = np.zeros(cfg.n_envs)
    evaluate({k: np.asarray(v) for k, v in nets["actor"].items()}, 0)
    n_iters = cfg.total_steps // batch_size
    T, B = cfg.n_steps, cfg.n_envs
    for it in range(1, n_iters + 1):
        actor_np = {k: np.asarray(v) for k, v in nets["actor"].items()}
        critic_np = {k: np.asarray(v) for k, v in nets["critic"].items()}
        std = np.exp(actor_np["log_std"])
        buf_obs = np.zeros((T, B, obs_dim), np.float32)
        buf_act = np.zeros((T, B, act_dim), np.float32)
        buf_rew = np.zeros((T, B))
        buf_done = np.zeros((T, B))
        for t in range(T):
            obs_rms.update(obs)
            obs_n = np.clip((obs - obs_rms.mean) / obs_rms.std, -OBS_CLIP, OBS_CLIP)
            mean = policy_mean({**actor_np, "obs_mean": 0.0, "obs_std": 1.0}, obs_n)
            act = mean + std * rng.standard_normal(mean.shape)
            obs, reward, term = env.step(np.clip(act, -ACTION_LIMIT, ACTION_LIMIT))
            ep_len += 1
            trunc = (ep_len >= MAX_EPISODE_STEPS) & ~term
            if trunc.any():  # bootstrap through the time limit
                final_n = np.clip((obs[trunc] - obs_rms.mean) / obs_rms.std, -OBS_CLIP, OBS_CLIP)
                reward_boot = cfg.gamma * _value_np(critic_np, final_n) * ret_rms.std
            disc_ret = disc_ret * cfg.gamma + reward
            ret_rms.update(disc_ret)
            scaled = np.clip(reward / ret_rms.std, -10, 10)
            if trunc.any():
                scaled[trunc] += reward_boot / ret_rms.std
            done = term | trunc
            buf_obs[t], buf_act[t], buf_rew[t], buf_done[t] = obs_n, act, scaled, done
            if done.any():
                idx = np.flatnonzero(done)
                q, v = new_starts(len(idx))
                obs = env.reset(q, v, idx)
                ep_len[idx] = 0
                disc_ret[idx] = 0.0
        last_n = np.clip((obs - obs_rms.mean) / obs_rms.std, -OBS_CLIP, OBS_CLIP)
        values = _value_np(critic_np, buf_obs)
        next_value = _value_np(critic_np, last_n)
        adv = np.zeros((T, B))
        gae = np.zeros(B)
        for t in reversed(range(T)):
            nv = next_value if t == T - 1 else values[t + 1]
            nonterminal = 1.0 - buf_done[t]
            delta = buf_rew[t] + cfg.gamma * nv * nonterminal - values[t]
            gae = delta + cfg.gamma * cfg.gae_lambda * nonterminal * gae
            adv[t] = gae
        logp_old = gaussian_log_prob(
            policy_mean({**actor_np, "obs_mean": 0.0, "obs_std": 1.0}, buf_obs), actor_np["log_std"], buf_act)
        data = tuple(jnp.asarray(x.reshape((T * B,) + x.shape[2:]), jnp.float32)
                     for x in (buf_obs, buf_act, logp_old, adv, adv + values))
        key, sub = jax.random.split(key)
        nets, opt_state = update(nets, opt_state, data, sub)
        ret = None
        if it % cfg.eval_every == 0 or it == n_iters:
            ret = evaluate({k: np.asarray(v) for k, v in nets["actor"].items()}, it * batch_size)
        if on_progress:
            on_progress(it * batch_size, ret)
    env.close()
    eval_env.close()
    return result
