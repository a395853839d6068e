"""Validity checks run before any training: finite, differentiable and (where required) monotone.

All checks run on the population kernel in float32, as training does, over `grammar.probes` (corners
of the data domain plus seeded random pairs), so a new candidate never triggers a recompilation.

* loss finite on every probe; d loss / d logp_w and d loss / d logp_l finite (per-step means follow
  the sums: mlogp = logp / len);
* mpo shape: phi_inv(u) non-decreasing in u over the log-likelihood range, and not constant;
* when monotone is required (default: the objective's `monotone`): g(z) non-increasing in the margin
  (mpo shape), and the loss non-increasing in logp_w and non-decreasing in logp_l.  The fraction of
  violating probes is reported in `Verdict.stats`; it must not exceed `max_violation`;
* when the labels must be usable (`labels=True`, what the search asks of every proposed candidate): g
  depends on the margin (mpo shape), and the loss changes when chosen and rejected swap.

`Verdict.behaviour` is the loss's gradient fingerprint: its slopes in logp_w and logp_l on the probes,
rounded to `BEHAVIOUR_DIGITS` significant digits, hashed.  A constant offset or a reordering of terms
gives the same fingerprint: the search treats them as one candidate.

`check` never raises: every failure, including an internal one, is a `Verdict(ok=False, reason=...)`.
"""
from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from grammar import kernel
from grammar.language import SYMBOLS, U, VARIABLES, Z, GrammarError
from grammar.objective import Objective
from grammar.probes import LOGP_MEAN_RANGE, LOGP_SUM_RANGE, probe_inputs

SLOPE_TOLERANCE = 1e-6  # |derivative| below this counts as flat
BEHAVIOUR_DIGITS = 3  # significant digits of the slopes in the gradient fingerprint
SWAP_RTOL, SWAP_ATOL = 1e-5, 1e-6  # a loss this close to itself with chosen and rejected swapped ignores the labels
N_RANDOM_PROBES = 1024
_T_GRID = np.array([0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    stats: Mapping[str, float] = field(default_factory=dict)
    behaviour: str = ""  # gradient fingerprint (set when ok)

    def __bool__(self) -> bool:
        return self.ok


@lru_cache(maxsize=1)
def _loss_probes() -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in probe_inputs(N_RANDOM_PROBES).items()}


@lru_cache(maxsize=1)
def _swapped_probes() -> dict[str, np.ndarray]:
    """The loss probes with chosen and rejected exchanged (every `_w` variable with its `_l` twin)."""
    probes = _loss_probes()
    twin = {n: n[:-1] + {"w": "l", "l": "w"}[n[-1]] if n.endswith(("_w", "_l")) else n for n in probes}
    return {n: probes[twin[n]] for n in probes}


def behaviour_fingerprint(d_w: np.ndarray, d_l: np.ndarray) -> str:
    """SHA-256 of the slopes, rounded to `BEHAVIOUR_DIGITS` significant digits (|slope| below
    `SLOPE_TOLERANCE` counts as 0)."""
    tokens = ["0" if abs(v) < SLOPE_TOLERANCE else f"{v:.{BEHAVIOUR_DIGITS - 1}e}"
              for v in np.concatenate([d_w, d_l]).astype(np.float64).tolist()]
    return hashlib.sha256(",".join(tokens).encode()).hexdigest()


@lru_cache(maxsize=1)
def _unary_grids() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, z, t): the u grid for phi_inv (sums, means, near 0) and the z grid for g (+-1e-3..1e3, 0),
    of equal size so one compiled function serves both, each crossed with a grid of t; float32."""
    signed = lambda lo, hi, k: np.concatenate([-np.logspace(lo, hi, k), [0.0], np.logspace(lo, hi, k)])
    u = np.concatenate([np.linspace(*LOGP_SUM_RANGE, 300), np.linspace(*LOGP_MEAN_RANGE, 140),
                        signed(-4, 1, 30)])
    z = signed(-3, 3, 250)
    t = np.repeat(_T_GRID, len(u))
    return np.tile(u, len(_T_GRID)).astype(np.float32), np.tile(z, len(_T_GRID)).astype(np.float32), \
        t.astype(np.float32)


@jax.jit
def _unary_and_slope(program, x, t, constants):
    """A one-argument program (its argument encoded as logp_w) and its derivative, at (x, t)."""
    def total(x):
        inputs = {n: jnp.ones_like(x) for n in VARIABLES}
        inputs.update(logp_w=x, t=t)
        value = kernel.interpret(program, inputs, constants)
        return value.sum(), value

    slope, value = jax.grad(total, has_aux=True)(x)
    return value, slope


def _describe(probes: Mapping[str, np.ndarray], index: int) -> str:
    return ", ".join(f"{n}={float(probes[n][index]):.4g}" for n in
                     ("logp_w", "logp_l", "ref_w", "ref_l", "len_w", "len_l", "t"))


def _unary_program(expr: sympy.Expr, argument: sympy.Symbol) -> kernel.Program:
    return kernel.encode(expr.xreplace({argument: SYMBOLS["logp_w"]}))


def check(objective: Objective, *, monotone: bool | None = None, max_violation: float = 0.0,
          labels: bool = False) -> Verdict:
    """Check an objective before training.  `monotone=None` uses `objective.monotone`; `labels` requires
    a loss that can use the preference labels."""
    try:
        return _check(objective, objective.monotone if monotone is None else monotone, max_violation, labels)
    except GrammarError as e:
        return Verdict(False, f"not encodable: {e.reason}")
    except Exception as e:  # noqa: BLE001 - a candidate must never crash the search
        return Verdict(False, f"internal error during the validity check: {type(e).__name__}: {e}")


def _check(objective: Objective, monotone: bool, max_violation: float, labels: bool) -> Verdict:
    program = kernel.encode(objective)
    constants = kernel.constant_vector(objective).astype(np.float32)
    probes = _loss_probes()
    loss, d_w, d_l = (np.asarray(a) for a in kernel.loss_and_slopes(program, probes, constants))
    n = len(loss)
    stats: dict[str, float] = {"probes": n, "instructions": program.length}

    def fail(reason: str) -> Verdict:
        return Verdict(False, reason, _frozen(stats))

    bad = ~np.isfinite(loss)
    stats["nonfinite_loss"] = bad.mean()
    if bad.any():
        return fail(f"loss is not finite on {bad.sum()}/{n} probes, e.g. at "
                    f"{_describe(probes, int(np.argmax(bad)))}")
    bad = ~(np.isfinite(d_w) & np.isfinite(d_l))
    stats["nonfinite_gradient"] = bad.mean()
    if bad.any():
        return fail(f"gradient w.r.t. logp_w/logp_l is not finite on {bad.sum()}/{n} probes, e.g. at "
                    f"{_describe(probes, int(np.argmax(bad)))}")

    if objective.shape == "mpo":
        u, z, t = _unary_grids()
        value, slope = (np.asarray(a) for a in _unary_and_slope(_unary_program(objective.phi_inv, U), u, t,
                                                                 constants))
        if not (np.isfinite(value).all() and np.isfinite(slope).all()):
            return fail("phi_inv(u) or its derivative is not finite on the log-likelihood range")
        stats["phi_inv_decreasing"] = (slope < -SLOPE_TOLERANCE).mean()
        if stats["phi_inv_decreasing"] > 0:
            i = int(np.argmax(slope < -SLOPE_TOLERANCE))
            return fail(f"phi_inv must be increasing but decreases at u={u[i]:.4g}, t={t[i]:.3g} "
                        f"(on {stats['phi_inv_decreasing']:.1%} of the grid)")
        if not (slope > SLOPE_TOLERANCE).any():
            return fail("phi_inv is constant in u: the policy does not enter the loss")
        _, slope = (np.asarray(a) for a in _unary_and_slope(_unary_program(objective.g, Z), z, t, constants))
        if labels and not (np.abs(slope) > SLOPE_TOLERANCE).any():
            return fail("label-blind: g does not depend on the margin, so the loss ignores which segment was "
                        "preferred")
        if monotone:
            increasing = slope > SLOPE_TOLERANCE
            stats["g_increasing"] = increasing.mean()
            if stats["g_increasing"] > max_violation:
                i = int(np.argmax(increasing))
                return fail(f"g must be non-increasing in the margin but increases at z={z[i]:.4g}, "
                            f"t={t[i]:.3g} (on {stats['g_increasing']:.1%} of the grid)")

    up_w, down_l = d_w > SLOPE_TOLERANCE, d_l < -SLOPE_TOLERANCE
    stats["increasing_in_logp_w"], stats["decreasing_in_logp_l"] = up_w.mean(), down_l.mean()
    if monotone:
        for name, violated, direction in (("logp_w", up_w, "increases"), ("logp_l", down_l, "decreases")):
            if violated.mean() > max_violation:
                return fail(f"the loss {direction} with {name} on {violated.mean():.1%} of the probes, "
                            f"e.g. at {_describe(probes, int(np.argmax(violated)))}")
    if not ((np.abs(d_w) > SLOPE_TOLERANCE) | (np.abs(d_l) > SLOPE_TOLERANCE)).any():
        return fail("the loss does not depend on the policy (zero gradient on every probe)")
    if labels:
        swapped = np.asarray(kernel.loss_and_slopes(program, _swapped_probes(), constants)[0])
        if np.allclose(loss, swapped, rtol=SWAP_RTOL, atol=SWAP_ATOL):
            return fail("label-blind: the loss is unchanged when chosen and rejected swap")
    return Verdict(True, "", _frozen(stats), behaviour_fingerprint(d_w, d_l))


def _frozen(stats: dict) -> Mapping[str, float]:
    return types.MappingProxyType({k: float(v) for k, v in stats.items()})
