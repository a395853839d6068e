"""Gaussian MLP policies as plain dicts of arrays, shared by every part of the suite.

Parameters: ``obs_mean``, ``obs_std`` (input normalisation, clipped to ±OBS_CLIP), ``w0, b0, ..., wK, bK`` (tanh hidden
layers, linear output) and a state-independent ``log_std``. The same functions run on numpy and on
jax.numpy (pass ``xp``); a batch of policies is the same dict with a leading batch axis on every
array. Actions are clipped to the control range [-1, 1] of all four tasks.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from evaluators.errors import SuiteError

ACTION_LIMIT = 1.0
OBS_CLIP = 10.0
LOG_2PI = math.log(2.0 * math.pi)


def n_layers(params) -> int:
    return sum(1 for k in params if k.startswith("w"))


def policy_mean(params, obs, xp=np):
    """Mean action for ``obs`` of shape (..., obs_dim); unbatched params."""
    x = xp.clip((obs - params["obs_mean"]) / params["obs_std"], -OBS_CLIP, OBS_CLIP)
    last = n_layers(params) - 1
    for i in range(last + 1):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < last:
            x = xp.tanh(x)
    return x


class BatchedPolicies:
    """P policies evaluated together with numpy; an observation's action does not depend on the others.

    OpenBLAS's matmul computes a row of a product the same whatever the other rows, as long as there
    are at least 2 rows and the column count is a multiple of 4 (narrower outputs use kernels whose
    rounding depends on the row count). So the output layer is padded with zero columns to a multiple
    of 4 (``out_dim``) and a single row is evaluated as two: an env's actions then do not depend on its
    lane of the native backend or on its batch-mates (``tests/test_native_speed_paths.py`` checks it
    bit for bit).
    """

    def __init__(self, params: dict):
        p = {k: np.asarray(v, np.float64) for k, v in params.items() if k != "log_std"}
        self.layers = n_layers(p)
        last = self.layers - 1
        self.act_dim = p[f"w{last}"].shape[-1]
        pad = -self.act_dim % 4
        w, b = p[f"w{last}"], p[f"b{last}"]
        p[f"w{last}"] = np.concatenate([w, np.zeros(w.shape[:-1] + (pad,))], axis=-1)
        p[f"b{last}"] = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,))], axis=-1)
        self.out_dim = self.act_dim + pad
        # Vectors as (P, 1, dim), broadcast over a policy's rows; made once (a step's numpy calls cost).
        self.obs_mean, self.obs_std = p["obs_mean"][:, None, :], p["obs_std"][:, None, :]
        self.weights = [p[f"w{i}"] for i in range(self.layers)]
        self.biases = [p[f"b{i}"][:, None, :] for i in range(self.layers)]
        self._buffers = None

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Mean actions, ``obs`` (P, N, obs_dim) -> (P, N, act_dim), a view valid until the next call."""
        n = obs.shape[1]
        if n == 1:
            obs = np.concatenate([obs, obs], axis=1)
        return self.padded_mean(obs)[:, :n, :self.act_dim]

    def padded_mean(self, obs: np.ndarray) -> np.ndarray:
        """(P, N, out_dim) mean actions and zero columns for N >= 2 rows per policy, in a buffer reused by
        the next call."""
        if self._buffers is None or self._buffers[0].shape != obs.shape:
            self._buffers = [np.empty(obs.shape)]
            self._buffers += [np.empty(obs.shape[:2] + b.shape[-1:]) for b in self.biases]
        x = self._buffers[0]
        np.subtract(obs, self.obs_mean, out=x)
        np.divide(x, self.obs_std, out=x)
        np.minimum(np.maximum(x, -OBS_CLIP, out=x), OBS_CLIP, out=x)  # np.clip, without its Python layer
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            y = self._buffers[i + 1]
            np.matmul(x, w, out=y)
            y += b
            if i < self.layers - 1:
                np.tanh(y, out=y)
            x = y
        return x


def gaussian_log_prob(mean, log_std, action, xp=np):
    """Log density of ``action`` under N(mean, exp(log_std)^2), summed over the action axis."""
    z = (action - mean) * xp.exp(-log_std)
    return -0.5 * xp.sum(z * z + 2.0 * log_std + LOG_2PI, axis=-1)


def init_policy(rng: np.random.Generator, obs_dim: int, act_dim: int, hidden=(64, 64),
                log_std: float = 0.0, out_scale: float = 0.01) -> dict[str, np.ndarray]:
    """Orthogonal initialisation (gain sqrt 2 hidden, ``out_scale`` output), float32."""
    sizes = [obs_dim, *hidden, act_dim]
    params = {"obs_mean": np.zeros(obs_dim, np.float32), "obs_std": np.ones(obs_dim, np.float32)}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = out_scale if i == len(sizes) - 2 else math.sqrt(2.0)
        params[f"w{i}"] = (gain * _orthogonal(rng, fan_in, fan_out)).astype(np.float32)
        params[f"b{i}"] = np.zeros(fan_out, np.float32)
    params["log_std"] = np.full(act_dim, log_std, np.float32)
    return params


def _orthogonal(rng, rows, cols):
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


def stack(policies: list[dict]) -> dict[str, np.ndarray]:
    keys = policies[0].keys()
    return {k: np.stack([np.asarray(p[k]) for p in policies]) for k in keys}


def unstack(batch: dict) -> list[dict]:
    n = len(next(iter(batch.values())))
    return [{k: np.asarray(v[i]) for k, v in batch.items()} for i in range(n)]


# -- checkpoints: safetensors, never pickle -------------------------------------------------

class CheckpointError(SuiteError):
    pass


def save_policy(path: str, params: dict, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(arrays, tmp, metadata={"meta": json.dumps(metadata or {}, sort_keys=True)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_policy(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not os.path.exists(path):
        raise CheckpointError(f"policy checkpoint not found: {path}")
    try:
        params = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"policy checkpoint {path} is damaged: {e}") from None
    required = {"obs_mean", "obs_std", "w0", "b0", "log_std"}
    missing = required - params.keys()
    if missing:
        raise CheckpointError(f"policy checkpoint {path} lacks {sorted(missing)}")
    if not all(np.all(np.isfinite(v)) for v in params.values()):
        raise CheckpointError(f"policy checkpoint {path} holds non-finite weights")
    return params
