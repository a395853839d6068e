"""What selection on label use changed in a run: its top 5 by the plain score against its top 5 by the
label figure, what the shuffled twins cost, and how many label-blind candidates each ranking puts first.

Reads a finished run (no training). Every found candidate has its plain search score (the mean of its
units' scores: what the search ranked by before selection on label use) and, where its shuffled twins were
trained (``controlled``), the figure it ranks by now (``evaluators.fitness.label_score``) and its paired
difference to its twins on the search units. A candidate is "label-blind on the search data" when that
difference's 95% CI does not lie above 0. Prints one JSON object: both top 5s with their figures, the twins'
seed units against the candidates' own, how many of each top ``--top-k`` (the finalists' count) are
label-blind, and the final report's label-use verdicts when the run has one.

    python benchmarks/label_selection.py --archive runs/archive.db [--run N] [--top-k 3]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from archive.store import REPORT_KEY, RACING_KEY, ArchiveStore
from evaluators.scoring import mean_ci95

TOP = 5


def summary(store: ArchiveStore, c: dict) -> dict:
    rows = store.scores(c["id"], fresh=False)
    plain = float(np.mean([r["score"] for r in rows]))
    out = {"id": c["id"], "formula": c["formula"][:100], "plain_score": plain, "fitness": c["fitness"],
           "units": c["units"], "controlled": bool(c["controlled"])}
    if c["controlled"]:
        d = np.array([r["score"] - r["shuffled"] for r in rows])
        mean, ci = mean_ci95(d) if len(d) > 2 else (float(d.mean()), float("inf"))
        out["minus_shuffled"] = [float(mean), float(ci)]
        out["label_blind"] = not (np.isfinite(ci) and mean - ci > 0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True)
    ap.add_argument("--run", type=int, default=None, help="run id (default: the latest)")
    ap.add_argument("--top-k", type=int, default=3, help="finalists of the run")
    args = ap.parse_args(argv)
    with ArchiveStore(args.archive, readonly=True) as store:
        run = store.run(args.run) if args.run else store.latest_run()
        found = [summary(store, c) for c in store.candidates(run["id"], status="evaluated", with_objective=False)
                 if c["origin"] != "zoo"]
        racing = store.get_state(run["id"], RACING_KEY) or {}
        report = store.get_state(run["id"], REPORT_KEY)
    by_plain = sorted(found, key=lambda c: -c["plain_score"])[:TOP]
    by_label = sorted([c for c in found if c["controlled"]], key=lambda c: -c["fitness"])[:TOP]

    def blind(top: list[dict]) -> dict:
        head = top[:args.top_k]
        return {"label_blind": sum(bool(c.get("label_blind")) for c in head),
                "not_controlled": sum(not c["controlled"] for c in head), "of": len(head)}

    out = {"run": run["id"], "config": {k: run["config"][k] for k in ("max_seconds", "max_evaluations", "baselines")},
           "found": len(found), "controlled": sum(c["controlled"] for c in found),
           "twin_units": racing.get("control_units"), "candidate_units": racing.get("units"),
           "top_by_plain_score": by_plain, "top_by_label_figure": by_label,
           "shared_top5": len({c["id"] for c in by_plain} & {c["id"] for c in by_label}),
           "finalists_before": blind(by_plain), "finalists_after": blind(by_label)}
    if report:
        out["report_label_use"] = {r["label"]: r.get("label_use") for r in report["rows"] if r["kind"] == "finalist"}
    json.dump(out, sys.stdout, indent=1)
    print()
    return out


if __name__ == "__main__":
    main()
