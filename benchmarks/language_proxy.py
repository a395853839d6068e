"""The proxy question: does the MuJoCo suite rank PO losses the way the language suite does?

For each variant: every zoo loss tuned on each domain's validation data seed (cached; the whole zoo, not
only the reported five), then scored at its tuned setting on the test data seed with the ``FRESH`` protocol
(5 pi_ref seeds) on halfcheetah (MuJoCo) and on ``lm``; the Spearman rank correlation of the two columns
with bootstrap 95% CIs (resampling the losses, and resampling each domain's seed units), the language
score's own rank correlation with KL, and the per-loss table. Prints JSON; ``--markdown FILE`` writes the
table. Each domain's table is stored under ``--save`` and reused with ``--reuse`` (a combined run after
the domains were measured separately).

    python benchmarks/language_proxy.py --variants clean noisy:0.2 --save runs/proxy
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def lm_column(variant: str, tuned_on: str, workers: int | None, on_event) -> dict:
    from evaluators.language import suite as lm
    from evaluators.protocol import FRESH, TEST_DATA_SEED
    from grammar.zoo import ZOO

    t0 = time.time()
    best = lm.tune(tuned_on, tuple(ZOO), workers=workers, on_event=on_event)
    tuned_s = time.time() - t0
    settings = [lm.tuned_setting(n, best[n]) for n in ZOO if n in best]
    t1 = time.time()
    table = lm.score_settings(settings, variant, TEST_DATA_SEED, FRESH, shuffled_control=False, oracle=True,
                              workers=workers, on_event=on_event)
    rows = {s.label.split(" ")[0]: {"units": table.unit_scores(s.label).tolist(), "kl": table.figure(s.label, "kl"),
                                    "final_kl": table.figure(s.label, "kl", "final"),
                                    "gold": table.figure(s.label, "gold"), "win": table.figure(s.label, "win"),
                                    "setting": best[s.label.split(" ")[0]]["label"]} for s in settings}
    rows["oracle"] = {"units": table.unit_scores("oracle").tolist(), "kl": table.figure("oracle", "kl"),
                      "final_kl": table.figure("oracle", "kl", "final"), "gold": table.figure("oracle", "gold"),
                      "win": table.figure("oracle", "win"), "setting": "SFT on best-of-N"}
    return {"rows": rows, "tuned_on": tuned_on, "tuning_s": tuned_s, "zoo_x_5_seeds_s": time.time() - t1}


def mujoco_column(task: str, variant: str, tuned_on: str, on_event) -> dict:
    from evaluators.protocol import FRESH, TEST_DATA_SEED, Combo, score_with_controls
    from evaluators.suite import task_suite, tune, tuned_setting
    from grammar.zoo import ZOO

    suite = task_suite(task)
    t0 = time.time()
    best = tune(task, tuned_on, names=tuple(ZOO), on_event=on_event)
    tuned_s = time.time() - t0
    settings = [tuned_setting(n, best[n]) for n in ZOO if n in best]
    t1 = time.time()
    combo = Combo(task, variant, TEST_DATA_SEED, suite.dataset, FRESH, suite.reference, None, on_event)
    table = score_with_controls(combo, [], settings, suite.train)
    rows = {s.label.split(" ")[0]: {"units": table.unit_scores(s.label).tolist(), "setting": best[s.label.split(" ")[0]]["label"]}
            for s in settings}
    rows["pi_ref"] = {"units": table.unit_scores("pi_ref").tolist()}
    rows["oracle"] = {"units": table.unit_scores("oracle").tolist()}
    return {"rows": rows, "tuned_on": tuned_on, "tuning_s": tuned_s, "zoo_x_5_seeds_s": time.time() - t1}


def spearman(x, y) -> float:
    from evaluators.language.suite import spearman as rank_correlation

    return rank_correlation(x, y)


def bootstrap(lm_units: np.ndarray, mj_units: np.ndarray, draws: int = 2000, seed: int = 0) -> dict:
    """95% percentile CIs of Spearman(mean MuJoCo score, mean language score) over the losses (rows)."""
    rng = np.random.default_rng(seed)
    n = len(lm_units)
    lm_mean, mj_mean = lm_units.mean(1), mj_units.mean(1)
    by_loss, by_unit = [], []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        if np.ptp(lm_mean[idx]) > 0 and np.ptp(mj_mean[idx]) > 0:
            by_loss.append(spearman(lm_mean[idx], mj_mean[idx]))
        a = lm_units[:, rng.integers(0, lm_units.shape[1], lm_units.shape[1])].mean(1)
        b = mj_units[:, rng.integers(0, mj_units.shape[1], mj_units.shape[1])].mean(1)
        by_unit.append(spearman(a, b))
    q = lambda v: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]  # noqa: E731
    return {"resampling_losses": q(by_loss), "resampling_seed_units": q(by_unit)}


def combine(variant: str, lm: dict, mj: dict) -> dict:
    from evaluators.scoring import mean_ci95

    names = [n for n in lm["rows"] if n in mj["rows"] and n not in ("oracle", "pi_ref")]
    lm_units = np.array([lm["rows"][n]["units"] for n in names])
    mj_units = np.array([mj["rows"][n]["units"] for n in names])
    table = []
    for n, a, b in zip(names, lm_units, mj_units):
        lm_m, lm_ci = mean_ci95(a)
        mj_m, mj_ci = mean_ci95(b)
        table.append({"loss": n, "lm": float(lm_m), "lm_ci95": float(lm_ci), "lm_kl": lm["rows"][n]["kl"],
                      "lm_final_kl": lm["rows"][n]["final_kl"], "lm_win": lm["rows"][n]["win"],
                      "lm_setting": lm["rows"][n]["setting"], "mujoco": float(mj_m), "mujoco_ci95": float(mj_ci),
                      "mujoco_setting": mj["rows"][n]["setting"]})
    table.sort(key=lambda r: -r["lm"])
    return {"variant": variant, "tuned_on": {"lm": lm.get("tuned_on", variant), "mujoco": mj.get("tuned_on", variant)},
            "losses": len(names), "spearman": spearman(lm_units.mean(1), mj_units.mean(1)),
            "ci95": bootstrap(lm_units, mj_units),
            "lm_score_vs_kl_spearman": spearman(lm_units.mean(1), [lm["rows"][n]["final_kl"] for n in names]),
            "lm_score_vs_budget_kl_spearman": spearman(lm_units.mean(1), [lm["rows"][n]["kl"] for n in names]),
            "lm_oracle": float(np.mean(lm["rows"]["oracle"]["units"])),
            "mujoco_pi_ref": float(np.mean(mj["rows"]["pi_ref"]["units"])),
            "mujoco_oracle": float(np.mean(mj["rows"]["oracle"]["units"])),
            "timing_s": {"lm_tuning": lm["tuning_s"], "lm_zoo_x_5_seeds": lm["zoo_x_5_seeds_s"],
                         "mujoco_tuning": mj["tuning_s"], "mujoco_zoo_x_5_seeds": mj["zoo_x_5_seeds_s"]},
            "table": table}


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        ci = r["ci95"]
        lines += [f"### {r['variant']} (zoo tuned on {r['tuned_on']['lm']}): Spearman {r['spearman']:+.2f} over {r['losses']} losses "
                  f"(95% CI {ci['resampling_losses'][0]:+.2f} to {ci['resampling_losses'][1]:+.2f} resampling losses, "
                  f"{ci['resampling_seed_units'][0]:+.2f} to {ci['resampling_seed_units'][1]:+.2f} resampling seed units); "
                  f"language score vs KL at the end of training: {r['lm_score_vs_kl_spearman']:+.2f}", "",
                  "| loss | language score | KL at budget / end | win rate | MuJoCo score (halfcheetah) | tuned (language) | tuned (MuJoCo) |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["table"]:
            lines.append(f"| {row['loss']} | {row['lm']:.1f} ± {row['lm_ci95']:.1f} | {row['lm_kl']:.2f} / "
                         f"{row['lm_final_kl']:.2f} | {row['lm_win']:.2f} | {row['mujoco']:.1f} ± {row['mujoco_ci95']:.1f} "
                         f"| {row['lm_setting']} | {row['mujoco_setting']} |")
        lines += ["", f"Language oracle (SFT on best-of-N): {r['lm_oracle']:.1f}; MuJoCo pi_ref {r['mujoco_pi_ref']:.1f}, "
                  f"oracle {r['mujoco_oracle']:.1f}.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["clean", "noisy:0.2"])
    ap.add_argument("--task", default="halfcheetah")
    ap.add_argument("--domains", nargs="+", default=["lm", "mujoco"], choices=["lm", "mujoco"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--tuned-on", default=None, help="tune on this variant (default: the scored variant itself)")
    ap.add_argument("--save", default="runs/proxy")
    ap.add_argument("--reuse", action="store_true", help="reuse a domain's stored table")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    os.makedirs(args.save, exist_ok=True)
    results = []
    for v in args.variants:
        columns = {}
        for domain in ("lm", "mujoco"):
            path = os.path.join(args.save, f"{domain}-{v.replace(':', '_')}.json")
            if args.reuse and os.path.exists(path):
                with open(path) as f:
                    columns[domain] = json.load(f)
            elif domain in args.domains:
                tuned_on = args.tuned_on or v
                columns[domain] = (lm_column(v, tuned_on, args.workers, log) if domain == "lm"
                                   else mujoco_column(args.task, v, tuned_on, log))
                with open(path, "w") as f:
                    json.dump(columns[domain], f)
        if len(columns) == 2:
            results.append(combine(v, columns["lm"], columns["mujoco"]))
    print(json.dumps(results, indent=1))
    if args.markdown and results:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))


if __name__ == "__main__":
    main()
