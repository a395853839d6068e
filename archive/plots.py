"""PNG figures of an archive and of one loss (matplotlib, Agg backend: no display needed).

* `plot_heatmap`            elite fitness per grid cell (`QDArchive`)
* `plot_fitness_over_time`  per-candidate and best-so-far fitness against evaluation index
* `plot_loss_shape`         a loss and its slope along the margin line next to a reference loss (DPO),
                            plus phi_inv(u) and g(z) for MPO-shaped objectives

Each function writes `path` (creating its folder) and returns it.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from archive.store import BASELINE_ORIGIN, PI_REF_KEY

if TYPE_CHECKING:
    from archive.qd import QDArchive
    from grammar.objective import Objective

U_RANGE = (-10.0, 2.0)  # phi_inv's argument: a log-likelihood (a per-step mean for ORPO-like psi)
Z_RANGE = (-10.0, 10.0)  # g's argument: the margin psi_w - psi_l


def _figure(rows: int = 1, cols: int = 1, width: float = 6.0, height: float = 4.5):
    """A figure of rows x cols panels of the given size each, and its axes in reading order."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, list(axes.flat)


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(qd_archive: QDArchive, path: str) -> str:
    """Elite fitness per cell over the first two descriptors (a strip for one descriptor).  With more than
    two, each shown cell holds the best elite over the other axes."""
    grid = qd_archive.fitness_grid()
    if grid.ndim > 2:
        filled = ~np.isnan(grid)
        grid = np.where(filled, grid, -np.inf).max(axis=tuple(range(2, grid.ndim)))
        grid[np.isneginf(grid)] = np.nan
    specs = qd_archive.specs
    if grid.ndim == 1:
        grid = grid[:, None]
    fig, (ax,) = _figure(width=6.5, height=5.0)
    x, y = specs[0], specs[1] if len(specs) > 1 else None
    extent = (x.low, x.high, y.low if y else 0.0, y.high if y else 1.0)
    image = ax.imshow(np.ma.masked_invalid(grid.T), origin="lower", aspect="auto", extent=extent,
                      cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="elite fitness (normalised return)")
    ax.set_xlabel(x.name)
    ax.set_ylabel(y.name if y else "")
    if y is None:
        ax.set_yticks([])
    stats = qd_archive.stats()
    best = "-" if stats["best_fitness"] is None else f"{stats['best_fitness']:.1f}"
    ax.set_title(f"coverage {stats['coverage']:.0%}   QD-score {stats['qd_score']:.1f}   best {best}")
    if grid.size <= 400:  # annotate cells while they are large enough to read
        dx, dy = (x.high - x.low) / grid.shape[0], (extent[3] - extent[2]) / grid.shape[1]
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                ax.text(x.low + (i + 0.5) * dx, extent[2] + (j + 0.5) * dy, f"{value:.0f}", ha="center",
                        va="center", fontsize=7, color="white")
    return _save(fig, path)


def plot_fitness_over_time(candidates: Sequence[Mapping], path: str, baseline: float | None = None,
                           baseline_name: str = "", pi_ref: float | None = None) -> str:
    """Fitness of each evaluated candidate (rows with `fitness`, in evaluation order; zoo baselines and
    found losses marked differently) and the best found so far; `baseline` (the best baseline, named by
    `baseline_name`) and `pi_ref` as horizontal lines.  The legend sits outside the axes."""
    rows = [c for c in candidates if c.get("fitness") is not None]
    fitness = np.array([c["fitness"] for c in rows], dtype=float)
    zoo = np.array([c.get("origin") == BASELINE_ORIGIN for c in rows], dtype=bool)
    fig, (ax,) = _figure(width=8.5)
    index = np.arange(1, len(fitness) + 1)
    if zoo.any():
        ax.scatter(index[zoo], fitness[zoo], s=22, marker="s", color="0.45", label="zoo loss")
    if (~zoo).any():
        ax.scatter(index[~zoo], fitness[~zoo], s=12, alpha=0.6, color="C0", label="found loss")
        best = np.maximum.accumulate(np.where(zoo, -np.inf, fitness))
        shown = np.isfinite(best)
        ax.step(index[shown], best[shown], where="post", color="C1", label="best found so far")
    if baseline is not None:
        ax.axhline(baseline, color="C3", linestyle="--",
                   label=f"best baseline{f' {baseline_name}' if baseline_name else ''} ({baseline:.1f})")
    if pi_ref is not None:
        ax.axhline(pi_ref, color="C2", linestyle=":", label=f"pi_ref ({pi_ref:.1f})")
    ax.set_xlabel("evaluation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("fitness (normalised return, search seeds)")
    ax.set_title(f"{len(fitness)} evaluated candidates")
    if len(fitness) or baseline is not None or pi_ref is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _part_curves(objective: Objective, part: str, variable: str, values: np.ndarray, t_values):
    """[(t, curve)] of an MPO part over `variable`; one curve when the part ignores t."""
    from grammar.compile import compile_numpy

    expr = getattr(objective, part)
    fn = compile_numpy(expr)
    ts = t_values if any(s.name == "t" for s in expr.free_symbols) else (None,)
    return [(t, np.broadcast_to(fn({variable: values, "t": np.full_like(values, 0.0 if t is None else t)},
                                   objective.constants), values.shape)) for t in ts]


def plot_loss_shape(objective: Objective, path: str, reference: Objective | None = None) -> str:
    """Loss and dL/dm along the margin line of `archive.descriptors` (both segments PROBE_LENGTH steps,
    logp_w - ref_w = m/2 = ref_l - logp_l), beside `reference` (default: DPO); for an MPO-shaped objective
    also phi_inv(u) and g(z).  Temporally aware losses get one curve per t in PROBE_T."""
    from archive.descriptors import PLOT_MARGIN, margin_profile
    from grammar.zoo import baseline

    reference = baseline("dpo") if reference is None else reference
    mpo = objective.shape == "mpo"
    fig, axes = _figure(2 if mpo else 1, 2, width=5.0, height=4.0)
    shown = {}
    styles = ((reference, {"linestyle": "--", "color": "0.35"}), (objective, {}))
    for obj, style in styles:
        profile = margin_profile(obj)
        keep = np.abs(profile.margins) <= PLOT_MARGIN
        m = profile.margins[keep]
        varies = not np.allclose(profile.loss, profile.loss[:1]) if len(profile.t) > 1 else False
        rows = range(len(profile.t)) if varies else (len(profile.t) - 1,)
        for i in rows:
            label = obj.name + (f" t={profile.t[i]:g}" if varies else "")
            slope = (profile.d_chosen[i] - profile.d_rejected[i])[keep] / 2.0  # d/dm along the line
            axes[0].plot(m, profile.loss[i][keep], label=label, **style)
            axes[1].plot(m, slope, label=label, **style)
        shown[obj.name] = profile
    axes[0].set(title="loss along the margin line", xlabel="margin m = h_w - h_l (nats)", ylabel="loss")
    axes[1].set(title="slope dL/dm", xlabel="margin m (nats)", ylabel="dL/dm")
    if mpo:
        for ax, part, var, lo_hi, title in ((axes[2], "phi_inv", "u", U_RANGE, "phi_inv(u)"),
                                             (axes[3], "g", "z", Z_RANGE, "g(z)")):
            grid = np.linspace(*lo_hi, 201)
            for obj, style in styles:
                if obj.shape != "mpo":
                    continue
                for t, curve in _part_curves(obj, part, var, grid, shown[obj.name].t):
                    ax.plot(grid, curve, label=obj.name + ("" if t is None else f" t={t:g}"), **style)
            ax.set(title=title, xlabel=var)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{objective.name} vs {reference.name}")
    return _save(fig, path)


def run_plots(store, run_id: int, qd, folder: str) -> dict[str, str]:
    """A run's heat map and fitness-over-time curve, under the file names every command writes them to
    (``run<id>-map.png``, ``run<id>-fitness.png``); the curve marks the best baseline and pi_ref."""
    stem = os.path.join(folder, f"run{run_id}")
    evaluated = store.candidates(run_id, status="evaluated", order_by="id", with_objective=False)
    best = store.best_baseline(run_id)
    pi_ref = (store.get_state(run_id, PI_REF_KEY) or {}).get("fitness")
    return {"map": plot_heatmap(qd, stem + "-map.png"),
            "fitness": plot_fitness_over_time(evaluated, stem + "-fitness.png", best["fitness"] if best else None,
                                              best["name"] if best else "", pi_ref)}
