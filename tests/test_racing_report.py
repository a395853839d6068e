"""Racing rules and the final report's statistics (paired tests, Holm, controls) on known numbers."""
import math

import numpy as np
import pytest

from discovery.racing import halve, paired_difference, rung_of, rung_seeds, rungs, separated
from discovery.report import LABEL_USE, SHUFFLED, VERDICTS, build_report, detectable, holm, markdown, \
    paired_test, table_rows, three_way, units_needed
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


def test_report_verdicts_are_three_valued_with_what_the_units_could_show():
    """Each of the three outcomes of both verdicts appears; a negative one only where the interval excludes a gain."""
    rng = np.random.default_rng(1)
    base = 50 + 5 * rng.standard_normal(6)  # what every policy shares on a unit (common random numbers)
    noise = lambda: rng.standard_normal(6)  # noqa: E731
    rows = {"#1": base + 20 + noise(), "#2": base + 20 + noise(), "#3": base - 15 + noise(), "#4": base + 3 * noise(),
            "dpo (tuned)": base + noise(), "sft (tuned)": base - 5 + noise(), "apo_zero (tuned)": base + 10 + noise(),
            "pi_ref": base - 10, "oracle": base + 40,
            "#1" + SHUFFLED: base - 10 + noise(), "#2" + SHUFFLED: base + 20 + 3 * noise(),
            "#3" + SHUFFLED: base - 30 + noise(), "#4" + SHUFFLED: base + 10 + noise()}
    finalists = [{"label": f"#{i}", "id": i, "formula": f"f{i}", "search": 70.0, "search_ci": 3.0, "units": 8,
                  "rung0": 75.0, "zoo_structure": "apo_zero at β 0.0127" if i == 1 else None,
                  "origin": "apo_zero" if i == 1 else "dpo"} for i in (1, 2, 3, 4)]
    held = _table("hopper clean", {k: v + 1 for k, v in rows.items()})
    report = build_report(finalists, ["sft (tuned)", "dpo (tuned)"], [_table("halfcheetah noisy:0.2", rows)],
                          [held], "6 units", "tuned", {"units": 30, "at_cap": 120}, data_seeds=(1, 2),
                          units_per_seed=2, origins={"apo_zero": "apo_zero (tuned)", "dpo": "dpo (tuned)"})
    by = {r["label"]: r for r in report["rows"]}
    assert report["best_baseline"] == "dpo (tuned)", "the best of what the run started from, not of the origins"
    assert by["apo_zero (tuned)"]["kind"] == "baseline" and not by["apo_zero (tuned)"]["best_baseline"]
    assert [by[f"#{i}"]["label_use"] for i in (1, 2, 3, 4)] == [
        "uses the preferences", "label use not shown", "uses the preferences", "does not use the preferences"]
    assert [by[f"#{i}"]["verdict"] for i in (1, 2, 3, 4)] == ["better", "better", "worse", "not shown"]
    ps = [by[f"#{i}"]["p"] for i in (1, 2, 3, 4)]
    assert [by[f"#{i}"]["p_holm"] for i in (1, 2, 3, 4)] == pytest.approx(holm(ps))
    assert by["#1"]["minus_origin"][0] == pytest.approx(10, abs=2) and by["#1"]["origin_label"] == "apo_zero (tuned)"
    d = rows["#4"] - rows["dpo (tuned)"]
    assert by["#4"]["detectable"] == pytest.approx(detectable(d))
    assert by["#4"]["seeds_needed"] == max(2, math.ceil(units_needed(d) / 2))
    assert by["#1"]["holdout_minus_best"]["hopper clean"][0] == pytest.approx(by["#1"]["minus_best"][0])
    head, cells = table_rows(report)
    assert "held out: hopper clean" in head and len(cells) == len(report["rows"])
    text = markdown(report)
    assert "★ best baseline" in text and "75% saved" in text and "does not use the preferences" in text
    assert "[= apo_zero at β 0.0127]" in text and "data seeds 1, 2" in text
    assert f"not shown (detects ≥ {by['#4']['detectable']:.1f}" in text


def test_smallest_detectable_difference_and_the_units_that_would_show_one():
    d = np.array([1.0, -1.0, 2.0, 0.0, 1.5, 0.5])
    n, sd = len(d), d.std(ddof=1)
    from scipy import stats
    expected = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert detectable(d) == pytest.approx(expected)
    need = units_needed(d)
    grown = lambda k: (stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)) * sd / math.sqrt(k)  # noqa: E731
    assert grown(need) <= d.mean() < grown(need - 1)
    assert units_needed(np.array([1.0, -1.0])) is None and math.isinf(detectable(np.array([1.0])))
    assert three_way(True, False, VERDICTS) == "better" and three_way(False, True, VERDICTS) == "worse"
    assert three_way(False, False, LABEL_USE) == "label use not shown"


def test_the_label_figure_takes_away_only_what_the_shuffled_twin_gains_over_pi_ref():
    from evaluators.fitness import Evaluation, label_score

    assert label_score({"score": 80.0}) == 80.0  # no twin: the plain score, an upper bound
    assert label_score({"score": 80.0, "shuffled": 70.0, "pi_ref": 55.0}) == 65.0  # the twin gained 15 without labels
    assert label_score({"score": 80.0, "shuffled": 40.0, "pi_ref": 55.0}) == 80.0  # a twin below pi_ref takes nothing
    rows = [{"task": "halfcheetah", "dataset": "noisy:0.2", "reference_seed": 0, "seed": s, "score": 80.0 + s,
             "pi_ref": 55.0} for s in range(3)]
    twins = [{"task": "halfcheetah", "dataset": "noisy:0.2+shuffled", "reference_seed": 0, "seed": s,
              "score": 60.0 + 10 * s} for s in (2, 1, 0)]  # any order: matched by unit
    plain = Evaluation(81.0, 1.0, rows)
    controlled = plain.with_control(Evaluation(70.0, 1.0, twins))
    assert not plain.controlled and controlled.controlled
    assert controlled.unit_scores() == {(0, 0): 80.0 - 5.0, (0, 1): 81.0 - 15.0, (0, 2): 82.0 - 25.0}
    assert controlled.fitness == pytest.approx((75.0 + 66.0 + 57.0) / 3) and controlled.fitness <= plain.fitness


def test_screening_rows_rank_the_first_rung_but_never_make_a_fitness():
    from evaluators.fitness import SCREEN_RUNG, Evaluation

    def rows(scores, rung, **extra):
        return [{"task": "halfcheetah", "dataset": "noisy:0.2", "reference_seed": 0, "seed": s, "score": x,
                 "pi_ref": 50.0, "rung": rung, **extra} for s, x in enumerate(scores)]

    screen = rows([30.0, 40.0], SCREEN_RUNG, steps=75)
    assert Evaluation(None, None, screen).unit_scores() == {}, "fewer-steps rows are not units of a fitness"
    assert Evaluation(None, None, screen).first_rung_fitness() == 35.0
    raced = Evaluation(None, None, screen).extended(Evaluation(None, None, rows([60.0, 80.0], 0)))
    assert raced.fitness == 70.0 and raced.unit_scores() == {(0, 0): 60.0, (0, 1): 80.0}
    assert raced.first_rung_fitness() == 35.0, "a batch is ranked on what all of it was trained on"
    assert raced.extended(Evaluation(None, None, rows([90.0, 90.0, 90.0], 1))).first_rung_fitness() == 35.0
    twins = [{"task": "halfcheetah", "dataset": "noisy:0.2+shuffled", "reference_seed": 0, "seed": s, "score": 60.0}
             for s in range(2)]
    controlled = raced.with_control(Evaluation(60.0, 0.0, twins))
    assert controlled.controlled and controlled.fitness == 60.0
    assert all("shuffled" not in r for r in controlled.scores if r["rung"] == SCREEN_RUNG)
    assert not Evaluation(None, None, screen).controlled
    assert Evaluation(None, None, rows([1.0], 0)).first_rung_fitness() == 1.0  # no screening: rung 0
