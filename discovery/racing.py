"""Raced fitness: a cheap first rung for every candidate, more training seeds only where they can matter.

Rungs are cumulative training-seed counts that double from the first rung up to the cap (2, 4, 8):
rung k trains seeds ``range(rungs[k-1], rungs[k])``, the same seeds for every candidate (common random
numbers), so any two candidates compare paired on the units they share.

* After rung 0 (successive halving) only the best ``1/ETA`` of the batch, by rung-0 fitness, go on.
* With a screening rung (``--first-rung-steps N``, multi-fidelity) rung 0 is trained first with N PO
  steps instead of the full ones, on the same seeds; the halving is made on that cheaper score, and only
  the best ``1/ETA`` are trained again with the full steps (their rung 0) and race on. A screened-out
  candidate keeps its screening rows but has no fitness: a fewer-steps score never stands beside a
  full-steps one in the QD grid, the hall of fame or the finalists.
* At later rungs a candidate goes on while its paired difference to the incumbent (the fittest
  candidate scored at the cap, a zoo baseline at first) has a 95% CI that still contains 0; once the
  CI separates from 0, either way, or the cap is reached, it stops.
"""

from __future__ import annotations

import math

import numpy as np

from evaluators.scoring import mean_ci95

ETA = 3  # successive halving: 1 in ETA candidates goes past the first rung
MIN_CI_UNITS = 3  # no CI is computed, shown or used from fewer units


def rungs(first: int, cap: int) -> list[int]:
    """Cumulative training seeds per rung: first, 2*first, ... and the cap."""
    out = [first]
    while out[-1] < cap:
        out.append(min(2 * out[-1], cap))
    return out


def rung_seeds(all_rungs: list[int], k: int) -> tuple[int, ...]:
    return tuple(range(all_rungs[k - 1] if k else 0, all_rungs[k]))


def rung_of(seed: int, all_rungs: list[int]) -> int:
    return next(k for k, n in enumerate(all_rungs) if seed < n)


def halve(fitness: list[float | None]) -> list[int]:
    """Indices of the best ceil(n/ETA) finite fitness values, best first."""
    ok = [i for i, f in enumerate(fitness) if f is not None and math.isfinite(f)]
    ok.sort(key=lambda i: -fitness[i])
    return ok[:math.ceil(len(ok) / ETA)]


def paired_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean, 95% CI half-width and count of a[u] - b[u] over the units both have."""
    common = [u for u in a if u in b]
    if not common:
        return math.nan, math.inf, 0
    d = np.array([a[u] - b[u] for u in common])
    mean, ci = mean_ci95(d) if len(d) >= MIN_CI_UNITS else (float(d.mean()), math.inf)
    return float(mean), float(ci), len(common)


def separated(candidate: dict, incumbent: dict) -> bool:
    """Whether the paired 95% CI of candidate - incumbent excludes 0."""
    mean, ci, _ = paired_difference(candidate, incumbent)
    return math.isfinite(ci) and abs(mean) > ci
