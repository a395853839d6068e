"""`discover transfer`: one loss on the language suite beside pi_ref, the ceiling, the tuned reported losses
and its own label-shuffled twin, paired over the same seed units, as a table and a reward-KL plot."""

from __future__ import annotations

import numpy as np

from evaluators.language.data import parse_lm_variant
from evaluators.language.suite import LM_SUITE, ORACLE, REPORTED_LOSSES, LMScoreTable, LMSuite, describe, \
    score_settings, tune, tune_lr, tuned_setting
from evaluators.language.training import best_of_n_kl
from evaluators.protocol import FRESH, SHUFFLED, TEST_DATA_SEED, Protocol
from grammar.objective import Objective
from grammar.zoo import ZOO


def transfer(objective: Objective, label: str, variant: str = "clean", suite: LMSuite = LM_SUITE,
             protocol: Protocol = FRESH, baselines: tuple[str, ...] = REPORTED_LOSSES, cache: str | None = None,
             workers: int | None = None, on_event=None) -> dict:
    """Score ``objective`` on the language suite (``variant``, test data seed) with its controls.

    A zoo loss comes at its tuned setting; any other loss keeps its constants and gets the learning rate of
    the suite's grid that scores best on the validation data seed (the baselines were tuned on the same seed
    over that grid and their constants)."""
    spec = parse_lm_variant(variant).spec
    protocol.validate()
    subject_name = objective.name if objective.name in ZOO and ZOO[objective.name].objective == objective else None
    best = tune(spec, tuple(dict.fromkeys(baselines + ((subject_name,) if subject_name else ()))), suite, cache,
                workers, on_event)
    if subject_name:
        subject = tuned_setting(subject_name, best[subject_name])
    else:
        subject = tune_lr(label, objective, spec, suite, cache, workers, on_event)
    others = [tuned_setting(n, best[n]) for n in baselines if n in best and n != subject_name]
    if on_event:
        on_event(f"transfer: {subject.label} (lr {subject.lr:g}) and its shuffled twin beside "
                 f"{len(others)} tuned losses on lm {spec}")
    table = score_settings([subject] + others, spec, TEST_DATA_SEED, protocol, suite, shuffled_control=(subject.label,),
                           oracle=True, cache=cache, workers=workers, on_event=on_event)
    return report(table, subject.label, objective, subject.lr, spec, protocol, suite)


def report(table: LMScoreTable, subject: str, objective: Objective, lr: float, variant: str, protocol: Protocol,
           suite: LMSuite) -> dict:
    rows = []
    for label in table.labels:
        kind = {subject: "loss", subject + SHUFFLED: "shuffled twin", "pi_ref": "pi_ref", ORACLE: "oracle"}.get(label, "baseline")
        mean, ci = table.mean_ci(label)
        row = {"label": label, "kind": kind, "score": [mean, ci], "gold": table.figure(label, "gold"),
               "win": table.figure(label, "win"), "kl": table.figure(label, "kl"),
               "final_gold": table.figure(label, "gold", "final"), "final_kl": table.figure(label, "kl", "final"),
               "failure": table.failures.get(label, "")}
        if label != "pi_ref":
            row["minus_pi_ref"] = list(table.paired(label, "pi_ref"))
        if kind in ("baseline", "oracle", "shuffled twin"):
            row["loss_minus_this"] = list(table.paired(subject, label))
        rows.append(row)
    units = table.details[subject]
    curve = [(best_of_n_kl(n), float(np.mean([u["best_of"][n] for u in units])))
             for n in range(1, suite.train.bon_samples + 1)]
    return {"loss": subject, "formula": objective.short_text(160), "lr": lr, "variant": variant,
            "protocol": describe(protocol, suite), "kl_budget": suite.train.kl_budget, "rows": rows,
            "best_of_n": curve}


def markdown(rep: dict) -> str:
    pm = lambda p: "-" if p is None else f"{p[0]:+.1f} ± {p[1]:.1f}"  # noqa: E731
    lines = [f"Transfer of {rep['loss']} (`{rep['formula']}`, lr {rep['lr']:g}) to lm {rep['variant']}.", "",
             f"Protocol: {rep['protocol']}.", "",
             "| policy | score | gold @ budget | win rate | KL @ budget / end | − pi_ref | loss − this |",
             "|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['label']} | {r['score'][0]:.1f} ± {r['score'][1]:.1f} | {r['gold']:.2f} | {r['win']:.2f} | "
                     f"{r['kl']:.2f} / {r['final_kl']:.2f} | {pm(r.get('minus_pi_ref'))} | {pm(r.get('loss_minus_this'))} |"
                     + (f" failed: {r['failure']}" if r["failure"] else ""))
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: str) -> str:
    """Gold reward against KL(pi || pi_ref): each policy at the budget and at the end, best-of-N's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    kl, reward = zip(*rep["best_of_n"])
    ax.plot(kl, reward, "k--", lw=1, label="best-of-N (KL bound)")
    ax.axvline(rep["kl_budget"], color="grey", lw=0.8, ls=":")
    for r in rep["rows"]:
        style = {"loss": dict(lw=2.2, marker="o"), "shuffled twin": dict(lw=1.2, marker="x", ls="--")}.get(
            r["kind"], dict(lw=1, marker="."))
        ax.plot([r["kl"], r["final_kl"]], [r["gold"], r["final_gold"]], label=r["label"], **style)
    ax.set_xlabel("KL(pi || pi_ref), nats per completion")
    ax.set_ylabel("gold reward")
    ax.set_title(f"{rep['loss']} on lm {rep['variant']}: at the KL budget (dotted) and at the end")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
