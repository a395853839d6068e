"""The input domain real data produce, and seeded probe sets drawn from it.

Continuous-action segments of up to ~100 steps of 3-8-dimensional Gaussian policies give sequence
log-likelihood sums of roughly [-2000, 300] and per-step means of [-20, 3]; policy-minus-reference
log-ratios span [-200, 200] (mostly near 0); lengths are 1..1000 steps; progress t is in [0, 1].
"""
from __future__ import annotations

import itertools

import numpy as np

from grammar.language import VARIABLES

LOGP_SUM_RANGE = (-2000.0, 300.0)
LOGP_MEAN_RANGE = (-20.0, 3.0)
LOG_RATIO_RANGE = (-200.0, 200.0)
LENGTH_RANGE = (1, 1000)


def from_sums(logp_w, logp_l, ref_w, ref_l, len_w, len_l, t) -> dict[str, np.ndarray]:
    """All `VARIABLES` from sums, lengths and progress (per-step means = sum / max(length, 1))."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64)
                                   for a in (logp_w, logp_l, ref_w, ref_l, len_w, len_l, t)))
    lw, ll, rw, rl, nw, nl, tt = arrays
    nw, nl = np.maximum(nw, 1.0), np.maximum(nl, 1.0)
    values = dict(logp_w=lw, logp_l=ll, ref_w=rw, ref_l=rl, mlogp_w=lw / nw, mlogp_l=ll / nl,
                  mref_w=rw / nw, mref_l=rl / nl, len_w=nw, len_l=nl, t=tt)
    return {n: values[n] for n in VARIABLES}


def _side(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    length = np.round(np.exp(rng.uniform(0.0, np.log(LENGTH_RANGE[1]), n)))
    mean = rng.uniform(*LOGP_MEAN_RANGE, n)
    logp = np.clip(mean * length, *LOGP_SUM_RANGE)
    wide = rng.uniform(*LOG_RATIO_RANGE, n)
    near_zero = rng.standard_normal(n) * 10.0 ** rng.uniform(-3.0, 1.0, n)
    ratio = np.where(rng.random(n) < 0.5, wide, near_zero)
    return logp, logp - ratio, length


def random_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` seeded random pairs spanning the data domain (float64)."""
    rng = np.random.default_rng(seed)
    logp_w, ref_w, len_w = _side(rng, n)
    logp_l, ref_l, len_l = _side(rng, n)
    t = np.where(rng.random(n) < 0.1, rng.integers(0, 2, n).astype(float), rng.random(n))
    return from_sums(logp_w, logp_l, ref_w, ref_l, len_w, len_l, t)


def corner_inputs() -> dict[str, np.ndarray]:
    """Every combination of extreme sums, log-ratios, lengths and progress, plus tied pairs."""
    sides = list(itertools.product((LOGP_SUM_RANGE[0], -50.0, LOGP_SUM_RANGE[1]),
                                   (LOG_RATIO_RANGE[0], 0.0, LOG_RATIO_RANGE[1]), LENGTH_RANGE))
    rows = [(*w, *l, t) for w, l, t in itertools.product(sides, sides, (0.0, 1.0))]
    rows += [(*w, *w, t) for w, t in itertools.product(sides, (0.0, 0.5, 1.0))]  # y_w and y_l tied
    (lw, rw_ratio, nw, ll, rl_ratio, nl, t) = np.array(rows, dtype=np.float64).T
    return from_sums(lw, ll, lw - rw_ratio, ll - rl_ratio, nw, nl, t)


def probe_inputs(n_random: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """Corners followed by `n_random` random pairs."""
    corners, rand = corner_inputs(), random_inputs(n_random, seed)
    return {n: np.concatenate([corners[n], rand[n]]) for n in VARIABLES}
