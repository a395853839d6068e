"""The final report of a run: finalists against pi_ref, the oracle and the baselines, with controls.

Every row is re-trained on the TEST dataset seeds (several draws of the data, never searched or tuned on)
with fresh pi_ref seeds, training seeds and episodes (``FitnessEvaluator.combos(fresh=True)``), all rows on
the same units, (data seed, pi_ref seed, training seed) (common random numbers):

* finalists: the run's top elites (distinct behaviour, raced to the cap first), each also trained on
  the label-shuffled dataset;
* baselines: the zoo losses the run started from at their tuned settings (``evaluators.suite.tune``,
  validation data seed; tuned on demand and cached) or at their default settings; the best of them by mean
  on the test data is named; and each finalist's zoo origin (the zoo loss its structure equals, else the
  zoo losses it descends from), tuned the same way;
* pi_ref and the oracle;
* two three-valued verdicts per finalist, each from its paired test over the units, negative only when
  the interval excludes a gain: label use (true labels against the shuffled twin, 95% CI: "uses the
  preferences" / "label use not shown" / "does not use the preferences") and the comparison with the best
  baseline (paired t-test, Holm-corrected over the finalists, alpha 0.05: "better" / "not shown" /
  "worse"); beside each, the smallest difference the run's units could have shown (power 0.8) and the
  ``--fresh-seeds`` that would show the observed one;
* held-out (task, variant) combos are scored the same way, in their own columns (no verdict).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import stats

from evaluators.protocol import SHUFFLED, ScoreTable, Setting
from evaluators.scoring import mean_ci95
from evaluators.suite import default_setting, tune, tuned_setting
from grammar.zoo import baseline

ALPHA = 0.05
POWER = 0.8  # of the smallest detectable difference
LABEL_USE = ("uses the preferences", "label use not shown", "does not use the preferences")
VERDICTS = ("better", "not shown", "worse")


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of a - b, its 95% CI half-width, and the two-sided paired t-test p-value (1 when a == b)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    mean, ci = mean_ci95(d)
    if len(d) < 2 or np.allclose(d, d[0]):
        p = 1.0 if np.allclose(d, 0) or len(d) < 2 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return float(mean), float(ci), p


def three_way(low_above_zero: bool, high_below_zero: bool, outcomes: tuple[str, str, str]) -> str:
    """(positive, not shown, negative): positive when the evidence shows a gain, negative only when it
    excludes one, else not shown."""
    return outcomes[0] if low_above_zero else outcomes[2] if high_below_zero else outcomes[1]


def _noncentral_factor(n: int, alpha: float, power: float) -> float:
    return float(stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1))


def detectable(d: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean of the paired differences ``d`` a two-sided paired t-test over this many units
    detects with probability ``power`` (their spread as observed): (t_{1-a/2} + t_power) sd / sqrt(n)."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return math.inf
    return _noncentral_factor(len(d), alpha, power) * float(np.std(d, ddof=1)) / math.sqrt(len(d))


def units_needed(d: np.ndarray, alpha: float = ALPHA, power: float = POWER, most: int = 100_000) -> int | None:
    """The fewest units at which the observed mean difference would be detectable (its spread as observed;
    counted one by one up to 64, then in steps of 10%, so above 64 it may overshoot by up to a tenth), None
    when the mean is 0 or more than ``most`` would be needed."""
    d = np.asarray(d, float)
    mean, sd = abs(float(d.mean())), float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    if not mean > 0 or not math.isfinite(sd):
        return None
    n = 2
    while _noncentral_factor(n, alpha, power) * sd / math.sqrt(n) > mean:
        n = n + 1 if n < 64 else int(n * 1.1)
        if n > most:
            return None
    return n


def _pair(x: tuple[float, float]) -> list[float]:
    return [float(x[0]), float(x[1])]


def baseline_settings(names: tuple[str, ...], mode: str, task: str, variant: str, train,
                      on_event=None) -> list[Setting]:
    """The zoo losses at their tuned settings (those not stored are tuned now) or at their defaults."""
    if mode == "tuned":
        best = tune(task, variant, names, on_event=on_event)
        return [tuned_setting(n, best[n]) for n in names if n in best]
    return [replace(default_setting(n, baseline(n), train), label=f"{n} (default)") for n in names]


def best_baseline(labels: list[str], main: list[ScoreTable]) -> str | None:
    """The baseline with the highest mean over the main tables' units among those trained everywhere."""
    present = [b for b in labels if all(b in t.labels and b not in t.failures for t in main)]
    mean = lambda b: np.mean([t.unit_scores(b) for t in main])  # noqa: E731
    return max(present, key=mean) if present else None


def build_report(finalists: list[dict], baselines: list[str], main: list[ScoreTable], holdouts: list[ScoreTable],
                 protocol: str, baseline_mode: str, racing: dict | None = None, data_seeds: tuple[int, ...] = (),
                 units_per_seed: int = 1, origins: dict[str, str] | None = None) -> dict:
    """The report as JSON-able data. ``finalists``: {label, id, formula, search, search_ci, units, rung0,
    zoo_structure, origin}; ``baselines``: the labels of the losses the run started from (the best baseline is
    the best of these); ``origins``: zoo name -> the label of its row (finalists' origins, may add rows);
    ``main``: one table per search combo over the test data draws (same units), ``holdouts`` likewise;
    ``units_per_seed``: units one more ``--fresh-seeds`` adds."""
    origins = origins or {}

    def units(label: str, tables: list[ScoreTable]) -> np.ndarray:
        return np.mean([t.unit_scores(label) for t in tables], axis=0)

    def ok(label: str, tables: list[ScoreTable]) -> bool:
        return all(label in t.labels and label not in t.failures for t in tables)

    def cell(label: str, table: ScoreTable) -> list[float] | None:
        return _pair(table.mean_ci(label)) if ok(label, [table]) else None

    best = best_baseline(baselines, main)
    extra = [label for label in dict.fromkeys(origins.values()) if label not in baselines]
    rows = []
    for kind, labels in (("pi_ref", ["pi_ref"]), ("oracle", ["oracle"]), ("baseline", list(baselines) + extra),
                         ("finalist", [f["label"] for f in finalists])):
        for label in labels:
            row = {"label": label, "kind": kind, "best_baseline": label == best,
                   "scores": {t.combo: cell(label, t) for t in main},
                   "holdouts": {t.combo: cell(label, t) for t in holdouts}}
            failed = [t.failures[label] for t in main + holdouts if label in t.failures]
            row["failure"] = failed[0] if failed else ""
            if all(row["scores"].values()):
                row["fresh"] = _pair(mean_ci95(units(label, main)))
            rows.append(row)
    info = {f["label"]: f for f in finalists}
    tested = []
    for row in rows:
        if row["kind"] != "finalist":
            continue
        f = info[row["label"]]
        row.update({k: f.get(k) for k in ("id", "formula", "search", "search_ci", "units", "rung0", "zoo_structure",
                                          "origin")})
        if "fresh" not in row:
            row["verdict"] = row["label_use"] = "failed"
            continue
        u = units(row["label"], main)
        shuffled = units(row["label"] + SHUFFLED, main)
        row["shuffled"] = _pair(mean_ci95(shuffled))
        m, ci, _ = paired_test(u, shuffled)
        row["minus_shuffled"] = [m, ci]
        row["label_use"] = three_way(math.isfinite(ci) and m - ci > 0, math.isfinite(ci) and m + ci < 0, LABEL_USE)
        row["label_use_detectable"] = detectable(u - shuffled)
        row["label_use_seeds_needed"] = _seeds(units_needed(u - shuffled), units_per_seed)
        origin = origins.get(f.get("origin") or "")
        if origin and ok(origin, main):
            row["origin_label"] = origin
            row["minus_origin"] = list(paired_test(u, units(origin, main))[:2])
        if best is not None:
            b = units(best, main)
            m, ci, p = paired_test(u, b)
            row["minus_best"], row["p"] = [m, ci], p
            row["detectable"] = detectable(u - b)
            row["seeds_needed"] = _seeds(units_needed(u - b), units_per_seed)
            tested.append(row)
        for t in holdouts:
            if best in t.labels and row["label"] in t.labels and row["label"] not in t.failures:
                row.setdefault("holdout_minus_best", {})[t.combo] = _pair(t.paired(row["label"], best))
    for row, p_holm in zip(tested, holm([r["p"] for r in tested])):
        row["p_holm"] = p_holm
        significant = p_holm <= ALPHA
        row["verdict"] = three_way(significant and row["minus_best"][0] > 0, significant and row["minus_best"][0] < 0,
                                   VERDICTS)
    return {"protocol": protocol, "data_seeds": list(data_seeds), "baselines": baseline_mode, "best_baseline": best,
            "columns": [t.combo for t in main], "holdout_columns": [t.combo for t in holdouts],
            "alpha": ALPHA, "power": POWER,
            "test": "paired t-test over (data seed, pi_ref seed, training seed) units, Holm over finalists",
            "racing": racing or {}, "rows": rows}


def _seeds(units: int | None, units_per_seed: int) -> int | None:
    return None if units is None else max(2, math.ceil(units / max(units_per_seed, 1)))


def _pm(x) -> str:
    return "—" if not x else (f"{x[0]:.1f} ± {x[1]:.1f}" if math.isfinite(x[1]) else f"{x[0]:.1f}")


def _diff(x) -> str:
    return "—" if not x else f"{x[0]:+.1f} ± {x[1]:.1f}"


def _verdict(verdict: str, detectable_: float | None, seeds: int | None, observed: list | None) -> str:
    """A verdict and, beside a "not shown", what this run's units could have shown and what would settle it."""
    if not verdict or verdict == "failed" or detectable_ is None or verdict not in (LABEL_USE[1], VERDICTS[1]):
        return verdict or ""
    need = f"; --fresh-seeds {seeds} would show the observed {observed[0]:+.1f}" if seeds and observed else ""
    return f"{verdict} (detects ≥ {detectable_:.1f}{need})" if math.isfinite(detectable_) else verdict


def data_seeds_text(report: dict) -> str:
    seeds = report.get("data_seeds") or [report.get("data_seed")]
    return f"data seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (never searched or tuned on)"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the report table (one source for the terminal and Markdown)."""
    head = (["row", "search (validation data)"] + [f"{c} (test data)" for c in report["columns"]]
            + ["shuffled labels", "− shuffled", "label use", "− its zoo origin (same tuning)",
               f"− best baseline ({report['best_baseline'] or 'none'})", "p (Holm)", "verdict"]
            + [f"held out: {c}" for c in report["holdout_columns"]])
    cells = []
    for r in report["rows"]:
        name = r["label"] + (" ★ best baseline" if r["best_baseline"] else "")
        if r["kind"] == "finalist":
            name += f"  {r['formula']}" + (f"  [= {r['zoo_structure']}]" if r.get("zoo_structure") else "")
        search = (f"{_pm([r['search'], r['search_ci'] or math.inf])} (n={r['units']}; rung 0: {r['rung0']:.1f})"
                  if r["kind"] == "finalist" else "")
        holdout = [_pm(r["holdouts"].get(c)) + (f" ({_diff(r.get('holdout_minus_best', {}).get(c))})"
                                                 if r.get("holdout_minus_best", {}).get(c) else "")
                   for c in report["holdout_columns"]]
        origin = f"{_diff(r['minus_origin'])} vs {r['origin_label']}" if r.get("minus_origin") else ""
        label_use = _verdict(r.get("label_use", ""), r.get("label_use_detectable"), r.get("label_use_seeds_needed"),
                             r.get("minus_shuffled"))
        verdict = _verdict(r.get("verdict", ""), r.get("detectable"), r.get("seeds_needed"),
                           r.get("minus_best")) or r["failure"]
        cells.append([name, search] + [_pm(r["scores"][c]) for c in report["columns"]]
                     + [_pm(r.get("shuffled")), _diff(r.get("minus_shuffled")), label_use, origin,
                        _diff(r.get("minus_best")), f"{r['p_holm']:.3f}" if "p_holm" in r else "", verdict]
                     + holdout)
    return head, cells


def racing_line(report: dict) -> str:
    racing = report.get("racing") or {}
    if not racing.get("at_cap"):
        return ""
    twins, screen = racing.get("control_units"), racing.get("screen_units")
    return (f"racing: {racing['units']} seed units trained for the found candidates, against {racing['at_cap']} "
            f"to evaluate every one at the cap ({1 - racing['units'] / racing['at_cap']:.0%} saved)"
            + (f", after {screen} screening units with fewer PO steps" if screen else "")
            + (f"; {twins} more for the label-shuffled twins of those that could enter the elites"
               if twins is not None else ""))


def markdown(report: dict) -> str:
    head, cells = table_rows(report)
    lines = [f"Final report: {report['protocol']}; {data_seeds_text(report)}; baselines at their "
             f"{report['baselines']} settings; verdicts: {report['test']}, alpha {report['alpha']}; \"detects ≥ x\": "
             f"the smallest difference these units show with power {report.get('power', POWER)}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    line = racing_line(report)
    return "\n".join(lines + ([f"\n{line}"] if line else [])) + "\n"
