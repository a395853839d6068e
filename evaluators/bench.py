"""``discover bench``: zoo objectives, default and tuned, x dataset variants x tasks, with floor and ceiling.

Every (task, variant) is scored with the suite's protocol (``evaluators.protocol``) on the TEST dataset
seed: each objective at its default setting and at its tuned setting (``evaluators.suite.tune``, on the
validation seed), beside pi_ref (the floor) and the oracle (the ceiling). Scores are mean ± 95% CI
over the (pi_ref seed, training seed) units; "- pi_ref" is the paired difference. Every row also
carries the held-out ranking accuracy of its implicit reward.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field

from evaluators.protocol import FRESH, TEST_DATA_SEED, Combo, Protocol, score_settings
from evaluators.suite import DEFAULT_TASKS, DEFAULT_VARIANTS, REPORTED_LOSSES, default_setting, task_suite, \
    tune, tuned_setting
from grammar.zoo import ZOO, baseline


@dataclass(frozen=True)
class BenchPreset:
    tasks: tuple[str, ...]
    variants: tuple[str, ...]
    protocol: Protocol
    objectives: tuple[str, ...] | None = None  # None: the whole zoo
    tuned: bool = True


PRESETS = {
    "quick": BenchPreset(tasks=DEFAULT_TASKS, variants=("clean",),
                         protocol=Protocol((0, 1, 2), (1_000,), 3, FRESH.eval_seed),
                         objectives=REPORTED_LOSSES),
    "full": BenchPreset(tasks=DEFAULT_TASKS, variants=DEFAULT_VARIANTS, protocol=FRESH),
}


@dataclass
class BenchRow:
    task: str
    variant: str
    objective: str
    setting: str  # "default", "tuned", or "" for pi_ref / oracle
    mean: float
    ci95: float
    unit_scores: list[float]
    ranking_accuracy: float
    minus_pi_ref: tuple[float, float] | None
    notes: str = ""


@dataclass
class BenchResult:
    preset: dict
    rows: list[BenchRow] = field(default_factory=list)
    seconds: float = 0.0

    def cell(self, task, variant, name) -> BenchRow | None:
        return next((r for r in self.rows if (r.task, r.variant, row_name(r)) == (task, variant, name)), None)


def row_name(row: BenchRow) -> str:
    return row.objective if not row.setting else f"{row.objective} ({row.setting})"


def run_bench(preset: BenchPreset, cache: str | None = None, on_progress=None) -> BenchResult:
    names = preset.objectives or tuple(ZOO)
    result = BenchResult(preset=json.loads(json.dumps(asdict(preset), default=list)))
    start = time.perf_counter()
    for task in preset.tasks:
        suite = task_suite(task)
        for variant in preset.variants:
            settings = [default_setting(n, baseline(n), suite.train) for n in names]
            tuned = {}
            if preset.tuned:
                tuned = tune(task, variant, names, cache, on_event=on_progress)
                settings += [tuned_setting(n, tuned[n]) for n in names if n in tuned]
            combo = Combo(task, variant, TEST_DATA_SEED, suite.dataset, preset.protocol, suite.reference, cache,
                          on_progress)
            if on_progress:
                on_progress(f"{combo.name}: training and scoring {len(settings)} settings")
            table = score_settings(combo, settings, suite.train)
            for label in table.labels:
                objective, _, setting = label.partition(" (")
                setting = setting.rstrip(")") if setting else ("" if label in ("pi_ref", "oracle") else "default")
                row = table.row(label)
                notes = row["failure"]
                if setting == "tuned":
                    t = tuned[objective]
                    notes = f"lr {t['lr']:g}, {t['steps']} steps" + "".join(
                        f", {k} {v:g}" for k, v in t["constants"].items()) + (f"; {notes}" if notes else "")
                result.rows.append(BenchRow(task, combo.variant.spec, objective, setting, row["mean"], row["ci95"],
                                            row["unit_scores"], row["ranking_accuracy"],
                                            None if label == "pi_ref" else table.paired(label, "pi_ref"), notes))
    result.seconds = time.perf_counter() - start
    return result


# -- reports -------------------------------------------------------------------------------------

def columns(result: BenchResult) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.task, r.variant) for r in result.rows))


def row_names(result: BenchResult) -> list[str]:
    names = list(dict.fromkeys(row_name(r) for r in result.rows))
    return sorted(names, key=lambda n: (n not in ("pi_ref", "oracle"), n.split(" (")[0] if n != "oracle" else "", n))


def format_cell(row: BenchRow | None) -> str:
    if row is None:
        return "-"
    text = f"{row.mean:.1f} ± {row.ci95:.1f}"
    stopped_early = row.notes and row.setting == "default"  # tuned rows' notes hold their settings
    return text + " *" if stopped_early else text


def to_markdown(result: BenchResult) -> str:
    cols = columns(result)
    lines = ["| objective | " + " | ".join(f"{t} {v}" for t, v in cols) + " |", "|---|" + "---|" * len(cols)]
    for name in row_names(result):
        lines.append(f"| {name} | " + " | ".join(format_cell(result.cell(t, v, name)) for t, v in cols) + " |")
    p = result.preset["protocol"]
    lines += ["", f"Normalised score (100 = expert, 0 = untrained), mean ± 95% CI over {len(p['reference_seeds'])} "
                  f"pi_ref seeds x {len(p['train_seeds'])} training seeds ({p['episodes']} episodes each), test dataset "
                  f"seed; tuned settings chosen on the validation seed. `*`: some seed stopped early on a non-finite "
                  f"value (see the JSON). Wall time {result.seconds:.0f} s."]
    return "\n".join(lines)


def write_reports(result: BenchResult, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"bench.{ext}") for ext in ("md", "csv", "json")}
    with open(paths["md"], "w") as f:
        f.write(to_markdown(result) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "variant", "objective", "setting", "mean", "ci95", "ranking_accuracy", "minus_pi_ref",
                    "minus_pi_ref_ci95", "unit_scores", "notes"])
        for r in result.rows:
            diff = r.minus_pi_ref or (float("nan"), float("nan"))
            w.writerow([r.task, r.variant, r.objective, r.setting, f"{r.mean:.4f}", f"{r.ci95:.4f}",
                        f"{r.ranking_accuracy:.4f}", f"{diff[0]:.4f}", f"{diff[1]:.4f}",
                        " ".join(f"{s:.4f}" for s in r.unit_scores), r.notes])
    with open(paths["json"], "w") as f:
        json.dump({"preset": result.preset, "seconds": result.seconds, "rows": [asdict(r) for r in result.rows]},
                  f, indent=1)
    return paths
