"""Offline preference-optimisation training of Gaussian MLP policies, a whole population per call.

The training loop is one jit-compiled function (PureJaxRL style) vmapped over
candidates x seeds x constant vectors. A candidate's objective enters as DATA (``programs``: a pytree
with a leading candidate axis, e.g. the grammar's postfix programs, and ``constants``: its free
constants), evaluated by ``loss_kernel(program, variables, constants) -> per-pair loss``
(``grammar.kernel.interpret``). The trainer is
compiled once per (dataset shape, population shape, config) and new objectives never recompile it.
The learning rate is data too (one per constant vector), so a grid over learning rate x constants
trains in one call.

On CPU each candidate is its own call of that function (a population axis of one): nothing is padded, a
racing rung or a few twins no longer pay for a whole batch, and a candidate's result depends on nothing
else in its population, nor on its size (a loss scored alone scores as in a table). The price is a full
batch: 8 candidates train ~20% slower in 8 calls than in one vmapped call (quiet
``benchmarks/candidate_profile.py``: 5.2 against 4.3 s a candidate); splitting populations into
power-of-two calls would keep that speed but make a score depend on the size of the call it lands in.
On an accelerator, where the width is free, the population is one call, padded to a fixed size
(``pad_to``) so a search never recompiles.
``member_steps()`` counts the member-steps trained and those that were padding.

Per step each member samples a minibatch of pairs, computes the policy's sequence log-likelihood
sums and per-step means for chosen (w) and rejected (l) segments, feeds them with the fixed reference
values, segment lengths and progress t = step / steps to the kernel, and takes an Adam step. A member
whose loss or gradient turns non-finite stops there (its parameters freeze) and reports why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evaluators.datasets import PreferenceDataset
from grammar.compile import make_inputs
from evaluators.policy import gaussian_log_prob, policy_mean

# Reasons a member stopped early (``TrainResult.stop_reason``).
RUNNING, NONFINITE_LOSS, NONFINITE_GRAD, NONFINITE_PARAMS = 0, 1, 2, 3
STOP_REASONS = {RUNNING: "", NONFINITE_LOSS: "non-finite loss", NONFINITE_GRAD: "non-finite gradient",
                NONFINITE_PARAMS: "non-finite parameters"}
CURVE_KEYS = ("loss", "margin", "chosen_logratio", "rejected_logratio")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_pairs: int = 32
    lr: float = 3e-4  # the default; ``train_population(learning_rates=...)`` sets one per member
    max_grad_norm: float = 10.0
    curve_points: int = 20
    train_log_std: bool = True


@dataclass
class TrainResult:
    params: dict  # trained policies, leading axes (candidates, seeds, constant vectors)
    curves: dict[str, np.ndarray]  # each (C, S, V, curve_points)
    curve_steps: np.ndarray  # (curve_points,)
    stopped_at: np.ndarray  # (C, S, V) step of the stop, or -1
    stop_reason: np.ndarray  # (C, S, V) codes of STOP_REASONS

    def reasons(self) -> np.ndarray:
        return np.vectorize(STOP_REASONS.get)(self.stop_reason)


def dataset_arrays(ds: PreferenceDataset) -> dict[str, np.ndarray]:
    """What the trainer needs from a dataset, as float32/int32 arrays."""
    return {
        "obs_w": ds["obs_w"], "act_w": ds["act_w"], "mask_w": ds.mask("w"), "len_w": ds["len_w"].astype(np.float32),
        "obs_l": ds["obs_l"], "act_l": ds["act_l"], "mask_l": ds.mask("l"), "len_l": ds["len_l"].astype(np.float32),
        "pref": ds["pref"].astype(np.float32),
    }


def sequence_logp(params, obs, act, mask):
    """Sum over valid steps of log pi(a_t | s_t): obs (..., L, d) -> (...)."""
    return jnp.sum(gaussian_log_prob(policy_mean(params, obs, jnp), params["log_std"], act, jnp) * mask, axis=-1)


def swap_sides(v):
    """The same variables with chosen and rejected exchanged (for soft labels)."""
    out = dict(v)
    for a, b in (("logp_w", "logp_l"), ("ref_w", "ref_l"), ("mlogp_w", "mlogp_l"), ("mref_w", "mref_l"),
                 ("len_w", "len_l")):
        out[a], out[b] = v[b], v[a]
    return out


def build_trainer(loss_kernel: Callable, cfg: TrainConfig, soft_labels: bool):
    """The jitted population trainer ``train(ref_params, data, ref_logps, programs, constants, seeds)``."""
    n_curve = max(1, min(cfg.curve_points, cfg.steps))
    every = max(1, cfg.steps // n_curve)
    # Adam without its learning rate, which each member applies itself: optax.adam(lr) is exactly this
    # chain followed by a scale of -lr.
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam())

    def trainable(params):
        keys = [k for k in params if k not in ("obs_mean", "obs_std") and (cfg.train_log_std or k != "log_std")]
        return {k: params[k] for k in keys}

    def train_one(ref_params, data, ref_logps, program, constants, lr, seed):
        frozen = {k: v for k, v in ref_params.items() if k not in trainable(ref_params)}
        n_pairs = data["pref"].shape[0]

        def pair_losses(theta, idx, t):
            policy = {**frozen, **theta}
            logp_w = sequence_logp(policy, data["obs_w"][idx], data["act_w"][idx], data["mask_w"][idx])
            logp_l = sequence_logp(policy, data["obs_l"][idx], data["act_l"][idx], data["mask_l"][idx])
            v = make_inputs(logp_w, logp_l, ref_logps["w"][idx], ref_logps["l"][idx],
                            data["len_w"][idx], data["len_l"][idx], t)
            loss = loss_kernel(program, v, constants)
            if soft_labels:
                pref = data["pref"][idx]
                loss = pref * loss + (1.0 - pref) * loss_kernel(program, swap_sides(v), constants)
            chosen, rejected = logp_w - v["ref_w"], logp_l - v["ref_l"]
            stats = {"margin": jnp.mean(chosen - rejected), "chosen_logratio": jnp.mean(chosen),
                     "rejected_logratio": jnp.mean(rejected)}
            return jnp.mean(loss), stats

        def step(carry, i):
            theta, opt_state, key, stopped_at, reason = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (cfg.batch_pairs,), 0, n_pairs)
            t = i.astype(jnp.float32) / cfg.steps
            (loss, stats), grads = jax.value_and_grad(pair_losses, has_aux=True)(theta, idx, t)
            updates, new_opt_state = opt.update(grads, opt_state, theta)
            updates = jax.tree.map(lambda u: -lr * u, updates)
            new_theta = optax.apply_updates(theta, updates)
            finite = lambda tree: jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
            bad = jnp.where(~jnp.isfinite(loss), NONFINITE_LOSS,
                            jnp.where(~finite(grads), NONFINITE_GRAD,
                                      jnp.where(~finite(new_theta), NONFINITE_PARAMS, RUNNING)))
            alive = reason == RUNNING
            newly_stopped = alive & (bad != RUNNING)
            keep = alive & (bad == RUNNING)
            theta = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_theta, theta)
            opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_opt_state, opt_state)
            stopped_at = jnp.where(newly_stopped, i, stopped_at)
            reason = jnp.where(newly_stopped, bad, reason)
            record = {"loss": loss, **stats}
            return (theta, opt_state, key, stopped_at, reason), record

        theta0 = trainable(ref_params)
        carry = (theta0, opt.init(theta0), jax.random.PRNGKey(seed), jnp.int32(-1), jnp.int32(RUNNING))
        (theta, _, _, stopped_at, reason), records = jax.lax.scan(step, carry, jnp.arange(cfg.steps))
        curves = {k: records[k][every - 1 :: every][:n_curve] for k in CURVE_KEYS}
        return {**frozen, **theta}, curves, stopped_at, reason

    # candidates x seeds x constant vectors; programs/constants/learning rates vary with the candidate axis.
    over_vectors = jax.vmap(train_one, in_axes=(None, None, None, None, 0, 0, None))
    over_seeds = jax.vmap(over_vectors, in_axes=(None, None, None, None, None, None, 0))
    over_candidates = jax.vmap(over_seeds, in_axes=(None, None, None, 0, 0, 0, None))
    return jax.jit(over_candidates), every * np.arange(1, n_curve + 1)


def reference_logps(ref_params, data) -> dict[str, jnp.ndarray]:
    """Fixed log pi_ref of every chosen and rejected segment (computed once per dataset)."""
    ref = jax.tree.map(jnp.asarray, ref_params)
    f = jax.jit(sequence_logp)
    return {"w": f(ref, data["obs_w"], data["act_w"], data["mask_w"]),
            "l": f(ref, data["obs_l"], data["act_l"], data["mask_l"])}


_TRAINERS: dict = {}
_MEMBER_STEPS = {"trained": 0, "padding": 0}


def member_steps() -> dict[str, int]:
    """Member-steps (one policy's PO step) trained by `train_population` in this process, and how many of
    them were padding (copies trained only to fill a fixed population shape)."""
    return dict(_MEMBER_STEPS)


def one_call_per_candidate() -> bool:
    """Whether `train_population` trains each candidate in its own call (on CPU; see the module doc)."""
    return jax.default_backend() == "cpu"


def train_population(loss_kernel: Callable, ds: PreferenceDataset, ref_params: dict, programs, constants,
                     seeds, cfg: TrainConfig = TrainConfig(), learning_rates=None,
                     pad_to: int | None = None) -> TrainResult:
    """Train every (candidate, seed, constant vector) from pi_ref: on CPU one compiled call per candidate,
    elsewhere one call for the population, padded to a multiple of ``pad_to`` candidates.

    ``programs``: pytree, leading axis C. ``constants``: (C, V, K) free-constant vectors per candidate.
    ``learning_rates``: (C, V), one per constant vector (default ``cfg.lr`` for all).
    ``seeds``: (S,) ints. The compiled trainer is cached per (kernel, config, soft labels) and JAX
    reuses it for every population of the same shapes.
    """
    data = {k: jnp.asarray(v) for k, v in dataset_arrays(ds).items()}
    soft = bool(np.any(ds["pref"] != 1.0))
    key = (loss_kernel, replace(cfg, lr=0.0), soft)  # the learning rate is data: no recompilation
    if key not in _TRAINERS:
        _TRAINERS[key] = build_trainer(loss_kernel, cfg, soft)
    trainer, curve_steps = _TRAINERS[key]
    ref = jax.tree.map(jnp.asarray, ref_params)
    constants = jnp.asarray(constants, jnp.float32)
    lrs = jnp.full(constants.shape[:2], cfg.lr, jnp.float32) if learning_rates is None else \
        jnp.broadcast_to(jnp.asarray(learning_rates, jnp.float32), constants.shape[:2])
    ref_logps, seeds = reference_logps(ref, data), jnp.asarray(seeds, jnp.uint32)
    n = constants.shape[0]
    per_candidate = len(seeds) * constants.shape[1] * cfg.steps
    if one_call_per_candidate():
        calls = [trainer(ref, data, ref_logps, jax.tree.map(lambda x: x[i:i + 1], programs), constants[i:i + 1],
                         lrs[i:i + 1], seeds) for i in range(n)]
        outputs = jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *calls)
        padding = 0
    else:
        padding = -n % (pad_to or 1)
        index = jnp.minimum(jnp.arange(n + padding), n - 1)  # padded with copies of the last candidate
        pad = lambda x: jnp.asarray(x)[index]
        outputs = jax.tree.map(lambda x: np.asarray(x)[:n],
                               trainer(ref, data, ref_logps, jax.tree.map(pad, programs), pad(constants), pad(lrs),
                                       seeds))
    _MEMBER_STEPS["trained"] += (n + padding) * per_candidate
    _MEMBER_STEPS["padding"] += padding * per_candidate
    params, curves, stopped_at, reason = outputs
    return TrainResult(params, curves, curve_steps, stopped_at, reason)


@jax.jit
def _implicit_reward_order(policies, ref, data):
    """Per policy and pair: 1 if log pi/pi_ref ranks the chosen segment above the rejected, 0.5 on ties."""
    ref_w = sequence_logp(ref, data["obs_w"], data["act_w"], data["mask_w"])
    ref_l = sequence_logp(ref, data["obs_l"], data["act_l"], data["mask_l"])

    def one(policy):
        h_w = sequence_logp(policy, data["obs_w"], data["act_w"], data["mask_w"]) - ref_w
        h_l = sequence_logp(policy, data["obs_l"], data["act_l"], data["mask_l"]) - ref_l
        return jnp.where(h_w > h_l, 1.0, jnp.where(h_w == h_l, 0.5, 0.0))

    return jax.lax.map(one, policies)


def ranking_accuracy(policies: dict, ref_params: dict, ds: PreferenceDataset) -> np.ndarray:
    """How often each policy's implicit reward log pi - log pi_ref ranks the chosen segment first.

    ``policies``: a batch (leading axis P); ``ds``: held-out pairs (weighted by their soft labels).
    Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings".
    """
    data = {k: jnp.asarray(v) for k, v in dataset_arrays(ds).items()}
    order = np.asarray(_implicit_reward_order(jax.tree.map(jnp.asarray, policies),
                                              jax.tree.map(jnp.asarray, ref_params), data))
    pref = ds["pref"].astype(np.float64)
    return (order * pref + (1.0 - order) * (1.0 - pref)).mean(-1)
