"""Does a run's top 5 survive fresh seeds and a fresh dataset seed, ranked before racing and after?

Takes a finished run's found candidates (zoo baselines excluded), its top 5 by the first rung's fitness
(what every candidate was scored on, with fewer PO steps under --first-rung-steps: "before racing") and
its top 5 by raced fitness ("after"), and
re-trains the union with the final report's protocol (test dataset seed, fresh pi_ref and training seeds,
new episodes) beside pi_ref and the best tuned baseline. Prints one JSON object: each candidate's search
and fresh scores, and per ranking how many of its 5 beat pi_ref and the best baseline on fresh seeds
(paired 95% CI above 0) and how many stay in the fresh top 5 of the union.

    python benchmarks/racing_survival.py --archive runs/archive.db [--run N] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from archive.store import ArchiveStore
from discovery.api import score, tuned_baselines
from evaluators.fitness import Evaluation
from evaluators.protocol import FRESH, Setting
from evaluators.suite import task_suite

TOP = 5


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True)
    ap.add_argument("--run", type=int, default=None, help="run id (default: the latest)")
    ap.add_argument("--seeds", type=int, default=len(FRESH.reference_seeds), help="fresh pi_ref seeds")
    args = ap.parse_args(argv)
    with ArchiveStore(args.archive, readonly=True) as store:
        run = store.run(args.run) if args.run else store.latest_run()
        fc = run["config"]["fitness"]
        task, variant = fc["tasks"][0], fc["datasets"][0]
        found = [c for status in ("evaluated", "screened") for c in store.candidates(run["id"], status=status)
                 if c["origin"] != "zoo"]
        for c in found:
            c["rung0"] = Evaluation(None, None, store.scores(c["id"], fresh=False)).first_rung_fitness()
    before = [c["id"] for c in sorted(found, key=lambda c: -c["rung0"])[:TOP]]
    after = [c["id"] for c in sorted((c for c in found if c["fitness"] is not None), key=lambda c: -c["fitness"])[:TOP]]
    chosen = {c["id"]: c for c in found if c["id"] in set(before) | set(after)}
    steps, lr = fc["train"]["steps"], fc["train"]["lr"]
    baselines = {s.label: s for s in tuned_baselines(task, variant)}
    start = time.perf_counter()
    protocol = replace(FRESH, reference_seeds=tuple(range(args.seeds)))
    table = score({**{f"#{i}": Setting(f"#{i}", c["objective"], lr, steps) for i, c in chosen.items()}, **baselines},
                  task, variant, protocol=protocol, shuffled_control=False,
                  on_event=lambda m: print(m, file=sys.stderr, flush=True))
    best = max(baselines, key=lambda b: table.mean_ci(b)[0])
    fresh = {i: table.mean_ci(f"#{i}")[0] for i in chosen}
    fresh_top = sorted(fresh, key=lambda i: -fresh[i])[:TOP]

    def wins(i: int, other: str) -> bool:
        mean, ci = table.paired(f"#{i}", other)
        return bool(mean - ci > 0)

    def summary(ids: list[int]) -> dict:
        return {"ids": ids, "beat_pi_ref": sum(wins(i, "pi_ref") for i in ids),
                "beat_best_baseline": sum(wins(i, best) for i in ids),
                "in_fresh_top5_of_union": sum(i in fresh_top for i in ids),
                "mean_fresh": sum(fresh[i] for i in ids) / len(ids)}

    out = {"archive": args.archive, "run": run["id"], "task": task, "variant": variant,
           "protocol": protocol.describe(), "best_baseline": best, "best_baseline_fresh": table.mean_ci(best),
           "pi_ref_fresh": table.mean_ci("pi_ref"), "oracle_fresh": table.mean_ci("oracle"),
           "before_racing": summary(before), "after_racing": summary(after),
           "candidates": [{"id": i, "formula": c["objective"].short_text(120), "rung0": c["rung0"],
                           "raced": c["fitness"], "units": c["units"], "fresh": table.mean_ci(f"#{i}"),
                           "minus_pi_ref": table.paired(f"#{i}", "pi_ref"), "minus_best": table.paired(f"#{i}", best)}
                          for i, c in chosen.items()],
           "seconds": time.perf_counter() - start}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
