"""The final report of a run: finalists against pi_ref, the oracle and the baselines, with controls.

Every row is re-trained on the TEST dataset seed with fresh pi_ref seeds, training seeds and episodes
(``FitnessEvaluator.combos(fresh=True)``), all rows on the same units (common random numbers):

* finalists: the run's top elites (distinct behaviour, raced to the cap first), each also trained on
  the label-shuffled dataset; a finalist whose true-label score does not beat its shuffled-label score
  (paired 95% CI above 0) "does not use the preferences" and is never a winner;
* baselines: the zoo's reported losses at their tuned settings (``evaluators.suite.tune``, validation
  data seed) or at their default settings; the best of them by mean is named;
* pi_ref and the oracle;
* verdict per finalist against the best baseline: a paired t-test over the units, Holm-corrected over
  the finalists (alpha 0.05);
* held-out (task, variant) combos are scored the same way, in their own columns (no verdict).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import stats

from evaluators.protocol import SHUFFLED, TEST_DATA_SEED, ScoreTable, Setting
from evaluators.scoring import mean_ci95
from evaluators.suite import default_setting, tune, tuned_setting
from grammar.zoo import baseline

ALPHA = 0.05
VERDICTS = ("better", "not distinguishable", "worse", "does not use the preferences")


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


def _pair(x: tuple[float, float]) -> list[float]:
    return [float(x[0]), float(x[1])]


def baseline_settings(names: tuple[str, ...], mode: str, task: str, variant: str, train) -> list[Setting]:
    if mode == "tuned":
        best = tune(task, variant)
        return [tuned_setting(n, best[n]) for n in names if n in best]
    return [replace(default_setting(n, baseline(n), train), label=f"{n} (default)") for n in names]


def build_report(finalists: list[dict], baselines: list[str], main: list[ScoreTable], holdouts: list[ScoreTable],
                 protocol: str, baseline_mode: str, racing: dict | None = None) -> dict:
    """The report as JSON-able data. ``finalists``: {label, id, formula, search, search_ci, units, rung0};
    ``main``: one table per search combo on the test data seed (same units), ``holdouts`` likewise."""

    def units(label: str, tables: list[ScoreTable]) -> np.ndarray:
        return np.mean([t.unit_scores(label) for t in tables], axis=0)

    def cell(label: str, table: ScoreTable) -> list[float] | None:
        return _pair(table.mean_ci(label)) if label in table.labels and label not in table.failures else None

    present = [b for b in baselines if all(b in t.labels and b not in t.failures for t in main)]
    best = max(present, key=lambda b: units(b, main).mean()) if present else None
    rows = []
    for kind, labels in (("pi_ref", ["pi_ref"]), ("oracle", ["oracle"]), ("baseline", baselines),
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
        row.update({k: info[row["label"]][k] for k in ("id", "formula", "search", "search_ci", "units", "rung0")})
        if "fresh" not in row:
            row["verdict"] = "failed"
            continue
        u = units(row["label"], main)
        shuffled = units(row["label"] + SHUFFLED, main)
        row["shuffled"] = _pair(mean_ci95(shuffled))
        m, ci, _ = paired_test(u, shuffled)
        row["minus_shuffled"] = [m, ci]
        row["uses_preferences"] = bool(math.isfinite(ci) and m - ci > 0)
        if best is not None:
            m, ci, p = paired_test(u, units(best, main))
            row["minus_best"], row["p"] = [m, ci], p
            tested.append(row)
        for t in holdouts:
            if best in t.labels and row["label"] in t.labels and row["label"] not in t.failures:
                row.setdefault("holdout_minus_best", {})[t.combo] = _pair(t.paired(row["label"], best))
    for row, p_holm in zip(tested, holm([r["p"] for r in tested])):
        row["p_holm"] = p_holm
        significant = p_holm <= ALPHA
        row["verdict"] = ("better" if row["minus_best"][0] > 0 else "worse") if significant else "not distinguishable"
    for row in rows:
        if row["kind"] == "finalist" and row.get("uses_preferences") is False:
            row["verdict"] = "does not use the preferences"
    return {"protocol": protocol, "data_seed": TEST_DATA_SEED, "baselines": baseline_mode, "best_baseline": best,
            "columns": [t.combo for t in main], "holdout_columns": [t.combo for t in holdouts],
            "alpha": ALPHA, "test": "paired t-test over (pi_ref seed, training seed) units, Holm over finalists",
            "racing": racing or {}, "rows": rows}


def _pm(x) -> str:
    return "—" if not x else (f"{x[0]:.1f} ± {x[1]:.1f}" if math.isfinite(x[1]) else f"{x[0]:.1f}")


def _diff(x) -> str:
    return "—" if not x else f"{x[0]:+.1f} ± {x[1]:.1f}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the report table (one source for the terminal and Markdown)."""
    head = (["row", "search (validation data)"] + [f"{c} (test data)" for c in report["columns"]] + ["shuffled labels",
            "− shuffled", f"− best baseline ({report['best_baseline'] or 'none'})", "p (Holm)", "verdict"]
            + [f"held out: {c}" for c in report["holdout_columns"]])
    cells = []
    for r in report["rows"]:
        name = r["label"] + (" ★ best baseline" if r["best_baseline"] else "")
        if r["kind"] == "finalist":
            name += f"  {r['formula']}"
        search = (f"{_pm([r['search'], r['search_ci'] or math.inf])} (n={r['units']}; rung 0: {r['rung0']:.1f})"
                  if r["kind"] == "finalist" else "")
        holdout = [_pm(r["holdouts"].get(c)) + (f" ({_diff(r.get('holdout_minus_best', {}).get(c))})"
                                                 if r.get("holdout_minus_best", {}).get(c) else "")
                   for c in report["holdout_columns"]]
        cells.append([name, search] + [_pm(r["scores"][c]) for c in report["columns"]]
                     + [_pm(r.get("shuffled")), _diff(r.get("minus_shuffled")), _diff(r.get("minus_best")),
                        f"{r['p_holm']:.3f}" if "p_holm" in r else "", r.get("verdict", "") or r["failure"]]
                     + holdout)
    return head, cells


def racing_line(report: dict) -> str:
    racing = report.get("racing") or {}
    if not racing.get("at_cap"):
        return ""
    return (f"racing: {racing['units']} seed units trained for the found candidates, against {racing['at_cap']} "
            f"to evaluate every one at the cap ({1 - racing['units'] / racing['at_cap']:.0%} saved)")


def markdown(report: dict) -> str:
    head, cells = table_rows(report)
    lines = [f"Final report: {report['protocol']}; data seed {report['data_seed']} (never searched on); "
             f"baselines at their {report['baselines']} settings; verdicts: {report['test']}, alpha {report['alpha']}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    line = racing_line(report)
    return "\n".join(lines + ([f"\n{line}"] if line else [])) + "\n"
