"""The reference policy pi_ref: behaviour cloning on a preference dataset, as SFT is for LLMs.

A Gaussian MLP (state-independent std) fitted by maximum likelihood to the chosen segments' (s, a)
pairs (or both sides), with observation statistics of the data baked in. Cached next to the
datasets, keyed by the dataset's content hash and the BC settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evaluators.datasets import DatasetError, PreferenceDataset, cache_root
from evaluators.policy import CheckpointError, gaussian_log_prob, init_policy, load_policy, policy_mean, save_policy


@dataclass(frozen=True)
class BCConfig:
    source: str = "chosen"  # "chosen" or "both"
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0

    def validate(self):
        if self.source not in ("chosen", "both"):
            raise DatasetError(f"BC source must be 'chosen' or 'both', got {self.source!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise DatasetError("BC steps and batch size must be positive")


def transitions(ds: PreferenceDataset, source: str = "chosen"):
    """Valid (observation, action) pairs of the chosen (or both) segments."""
    sides = ("w",) if source == "chosen" else ("w", "l")
    obs = [ds[f"obs_{s}"][ds.mask(s) > 0] for s in sides]
    act = [ds[f"act_{s}"][ds.mask(s) > 0] for s in sides]
    return np.concatenate(obs), np.concatenate(act)


def behaviour_clone(obs: np.ndarray, act: np.ndarray, cfg: BCConfig) -> tuple[dict, list[float]]:
    rng = np.random.default_rng(cfg.seed)
    params = init_policy(rng, obs.shape[1], act.shape[1], cfg.hidden, out_scale=1.0)
    params["obs_mean"] = obs.mean(0).astype(np.float32)
    params["obs_std"] = (obs.std(0) + 1e-3).astype(np.float32)
    frozen = {k: jnp.asarray(params.pop(k)) for k in ("obs_mean", "obs_std")}
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))
    obs_j, act_j = jnp.asarray(obs), jnp.asarray(act)

    def nll(p, idx):
        full = {**p, **frozen}
        return -gaussian_log_prob(policy_mean(full, obs_j[idx], jnp), full["log_std"], act_j[idx], jnp).mean()

    @jax.jit
    def train(p, key):
        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (cfg.batch_size,), 0, obs_j.shape[0])
            loss, g = jax.value_and_grad(nll)(p, idx)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(key, cfg.steps))
        return p, losses

    trained, losses = train(jax.tree.map(jnp.asarray, params), jax.random.PRNGKey(cfg.seed))
    out = {k: np.asarray(v) for k, v in {**trained, **frozen}.items()}
    return out, np.asarray(losses).tolist()


def _path(ds: PreferenceDataset, cfg: BCConfig, cache: str | None) -> str:
    key = json.dumps({"data": ds.content_hash, **asdict(cfg)}, sort_keys=True)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache or os.path.join(cache_root(), "reference"), f"{ds.task}-bc-{tag}.safetensors")


def reference_policy(ds: PreferenceDataset, cfg: BCConfig | None = None, cache: str | None = None,
                     rebuild: bool = False) -> dict:
    """pi_ref for ``ds``: from cache when intact, else trained and cached."""
    cfg = cfg or BCConfig()
    cfg.validate()
    path = _path(ds, cfg, cache)
    if os.path.exists(path) and not rebuild:
        try:
            return load_policy(path)
        except CheckpointError:
            pass  # damaged cache entry: retrain below
    os.makedirs(os.path.dirname(path), exist_ok=True)
    obs, act = transitions(ds, cfg.source)
    params, losses = behaviour_clone(obs, act, cfg)
    save_policy(path, params, {"dataset": ds.content_hash, "bc": asdict(cfg), "final_nll": losses[-1]})
    return params
