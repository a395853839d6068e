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
from decimal import Decimal

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
    """P policies evaluated together with numpy; an env's action has the same bits on every x86-64 CPU,
    whatever its batch-mates, its position in the batch or the BLAS kernel.

    Every matmul is exact. A layer's inputs are rounded to a grid of 2^-p and its weights and bias to
    2^-q and 2^-(p+q), with p + q chosen from the policy's own weights (``exact_grids``) so that every
    product and partial sum of ``x @ w + b`` is an integer multiple of 2^-(p+q) below 2^51 of them,
    which float64 holds exactly: any kernel, blocking, summation order or FMA gives the same bits. The
    rounding moves an action by a few millionths, far below what a policy's behaviour feels. The other
    steps are elementwise IEEE operations (exact rounding, the same everywhere) and numpy's tanh (the
    same code path on every x86-64-v3 and v4 CPU; see README, "Reproducibility across CPUs").
    """

    def __init__(self, params: dict):
        p = {k: np.asarray(v, np.float64) for k, v in params.items() if k != "log_std"}
        self.layers = n_layers(p)
        self.act_dim = p[f"w{self.layers - 1}"].shape[-1]
        self.weights, self.biases, self.out_scales, self.in_scales = [], [], [], []
        for i in range(self.layers):
            w, b = p[f"w{i}"], p[f"b{i}"]
            in_bits, w_bits = exact_grids(w, b, OBS_CLIP if i == 0 else 1.0)
            self.weights.append(np.rint(np.ldexp(w, w_bits[:, None, None])))
            self.biases.append(np.rint(np.ldexp(b, in_bits[:, None] + w_bits[:, None]))[:, None, :])
            self.out_scales.append(np.ldexp(1.0, -(in_bits + w_bits))[:, None, None])
            self.in_scales.append(np.ldexp(1.0, in_bits)[:, None, None])
        # Layer 0's input grid folded into the normalisation: (obs - mean) / (std 2^-p) = 2^p (obs - mean) / std.
        self.obs_mean = p["obs_mean"][:, None, :]
        self.obs_std = p["obs_std"][:, None, :] / self.in_scales[0]
        self.obs_clip = OBS_CLIP * self.in_scales[0]
        self._buffers = None

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Mean actions, ``obs`` (P, N, obs_dim) -> (P, N, act_dim), in a buffer reused by the next call."""
        if self._buffers is None or self._buffers[0].shape != obs.shape:
            self._buffers = [np.empty(obs.shape)]
            self._buffers += [np.empty(obs.shape[:2] + b.shape[-1:]) for b in self.biases]
        x = self._buffers[0]
        np.subtract(obs, self.obs_mean, out=x)
        np.divide(x, self.obs_std, out=x)
        np.minimum(np.maximum(x, -self.obs_clip, out=x), self.obs_clip, out=x)  # np.clip, without its Python layer
        np.rint(x, out=x)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            y = self._buffers[i + 1]
            np.matmul(x, w, out=y)
            y += b
            y *= self.out_scales[i]
            if i < self.layers - 1:
                np.tanh(y, out=y)
                y *= self.in_scales[i + 1]
                np.rint(y, out=y)
            x = y
        return x


EXACT_BITS = 51


def exact_grids(w: np.ndarray, b: np.ndarray, in_bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Per policy, the input and weight grids (p, q) of a layer ``x @ w + b`` with |x| <= ``in_bound``:
    |x @ w + b| 2^(p+q) <= n in_bound max|w| + max|b|, scaled, stays below 2^EXACT_BITS; p gets half."""
    n = w.shape[-2]
    bound = n * in_bound * np.abs(w).max(axis=(-2, -1)) + np.abs(b).max(axis=-1)
    finite = np.isfinite(bound) & (bound > 0)
    exponent = np.frexp(np.where(finite, bound, 1.0))[1]  # bound <= 2^exponent
    total = np.where(finite, EXACT_BITS - exponent, 80)
    in_bits = np.minimum(total // 2, 40)
    return in_bits, total - in_bits


def portable_exp(x) -> np.ndarray:
    """exp(x) elementwise by Python's decimal module (28 correct digits, then rounded to float64), software
    only: the same bits on every CPU, where numpy's exp takes another code path with AVX-512. For the few values that decide data (action noise
    scales, label probabilities)."""
    x = np.asarray(x, np.float64)
    return np.array([float(Decimal(v).exp()) for v in x.ravel().tolist()]).reshape(x.shape)


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
