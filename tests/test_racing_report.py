"""Racing rules and the final report's statistics (paired tests, Holm, controls) on known numbers."""
import math

import numpy as np
import pytest

from discovery.racing import halve, paired_difference, rung_of, rung_seeds, rungs, separated
from discovery.report import SHUFFLED, build_report, holm, markdown, paired_test, table_rows
from evaluators.protocol import ScoreTable


def test_rungs_double_up_to_the_cap_and_share_seeds():
    assert rungs(2, 8) == [2, 4, 8] and rungs(2, 5) == [2, 4, 5] and rungs(3, 3) == [3]
    r = rungs(2, 8)
    assert [rung_seeds(r, k) for k in range(3)] == [(0, 1), (2, 3), (4, 5, 6, 7)]
    assert [rung_of(s, r) for s in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]


def test_successive_halving_keeps_the_best_third_of_the_finite():
    assert halve([5.0, None, 3.0, 9.0, 1.0]) == [3, 0]
    assert halve([float("nan"), None]) == []
    assert halve([1.0]) == [0]


def test_racing_stops_once_the_paired_ci_separates():
    rng = np.random.default_rng(0)
    incumbent = {(0, s): 50.0 + 10 * rng.standard_normal() for s in range(8)}
    better = {u: v + 20 + rng.standard_normal() for u, v in incumbent.items()}  # paired: noise cancels
    alike = {u: v + rng.standard_normal() * 5 for u, v in incumbent.items()}
    assert separated(better, incumbent) and not separated(alike, incumbent)
    two = {u: better[u] for u in list(better)[:2]}
    assert not separated(two, incumbent), "no CI from fewer than 3 units"
    mean, ci, n = paired_difference(two, incumbent)
    assert n == 2 and math.isinf(ci) and mean > 15


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.6]) == [1.0, 1.0]


def test_paired_test_matches_the_definition():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.5, 2.0, 4.5])
    mean, ci, p = paired_test(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / 2)
    assert mean == pytest.approx(0.5) and 0 < p < 1 and ci > 0
    assert t == pytest.approx(mean / (ci / 3.182446305284263))  # t(0.975, 3)
    assert paired_test(a, a)[2] == 1.0


def _table(combo: str, rows: dict[str, np.ndarray]) -> ScoreTable:
    labels = list(rows)
    scores = np.stack([rows[k] for k in labels])[:, :, None]
    units = [(r, 1000) for r in range(scores.shape[1])]
    return ScoreTable(combo, labels, units, scores, scores, np.full(scores.shape[:2], np.nan))


def test_report_verdicts_controls_and_best_baseline():
    rng = np.random.default_rng(1)
    base = 50 + 5 * rng.standard_normal(6)  # what every policy shares on a unit (common random numbers)
    rows = {"#1": base + 20 + rng.standard_normal(6), "#2": base + 20 + rng.standard_normal(6),
            "#3": base - 15 + rng.standard_normal(6), "#4": base + rng.standard_normal(6),
            "dpo (tuned)": base + rng.standard_normal(6), "sft (tuned)": base - 5 + rng.standard_normal(6),
            "pi_ref": base - 10, "oracle": base + 40,
            "#1" + SHUFFLED: base - 10 + rng.standard_normal(6), "#2" + SHUFFLED: base + 20 + rng.standard_normal(6),
            "#3" + SHUFFLED: base - 30 + rng.standard_normal(6), "#4" + SHUFFLED: base - 20 + rng.standard_normal(6)}
    finalists = [{"label": f"#{i}", "id": i, "formula": f"f{i}", "search": 70.0, "search_ci": 3.0, "units": 8,
                  "rung0": 75.0} for i in (1, 2, 3, 4)]
    held = _table("hopper clean", {k: v + 1 for k, v in rows.items()})
    report = build_report(finalists, ["sft (tuned)", "dpo (tuned)"], [_table("halfcheetah noisy:0.2", rows)],
                          [held], "6 units", "tuned", {"units": 30, "at_cap": 120})
    by = {r["label"]: r for r in report["rows"]}
    assert report["best_baseline"] == "dpo (tuned)" and by["dpo (tuned)"]["best_baseline"]
    assert by["#1"]["verdict"] == "better" and by["#1"]["uses_preferences"]
    assert by["#2"]["verdict"] == "does not use the preferences", "as good as its shuffled self: never a winner"
    assert by["#3"]["verdict"] == "worse"
    assert by["#4"]["verdict"] == "not distinguishable"
    ps = [by[f"#{i}"]["p"] for i in (1, 2, 3, 4)]
    assert [by[f"#{i}"]["p_holm"] for i in (1, 2, 3, 4)] == pytest.approx(holm(ps))
    assert by["#1"]["holdout_minus_best"]["hopper clean"][0] == pytest.approx(by["#1"]["minus_best"][0])
    head, cells = table_rows(report)
    assert "held out: hopper clean" in head and len(cells) == len(report["rows"])
    text = markdown(report)
    assert "★ best baseline" in text and "75% saved" in text and "does not use the preferences" in text
