"""Why a pairwise loss does (not) beat pi_ref: one JSON object of measurements on one task x variant.

For DPO, CPL and DPO with an anchor (an SFT term on y_w, or a squared log-ratio term that holds both
log-ratios near 0), trained for several step counts and learning rates from the same pi_ref seeds
(test dataset seed, paired units), it prints the normalised score, the paired difference to pi_ref
and to SFT, and the held-out ranking accuracy of the implicit reward. A loss that ranks the held-out
pairs well while its score falls below pi_ref learned the preferences but moved the policy the wrong
way (likelihood displacement); a rising score with the steps says early stopping would not help.

    python benchmarks/pairwise_diagnosis.py --task halfcheetah --variant clean
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from evaluators.protocol import FRESH, TEST_DATA_SEED, Combo, Setting, score_settings
from evaluators.suite import task_suite
from grammar.objective import Objective
from grammar.zoo import baseline

LOSSES = {
    "sft": baseline("sft"),
    "dpo": baseline("dpo").replace(constants={"beta": 1.0}),
    "cpl": baseline("cpl").replace(constants={"beta": 0.01, "lam": 0.5}),
    "dpo+sft_anchor": Objective.mpo("dpo_sft_anchor", g="-logsigmoid(z)", imitation="lam",
                                    constants={"beta": 1.0, "lam": 1.0}),
    "dpo+ratio_anchor": Objective.free("dpo_ratio_anchor", "-logsigmoid(beta*(logp_w - ref_w - logp_l + ref_l))"
                                       " + lam*((mlogp_w - mref_w)**2 + (mlogp_l - mref_l)**2)",
                                       constants={"beta": 1.0, "lam": 1.0}, monotone=False),  # an anchor
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="halfcheetah")
    ap.add_argument("--variant", default="clean")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3])
    ap.add_argument("--reference-seeds", type=int, default=3)
    args = ap.parse_args(argv)
    suite = task_suite(args.task)
    protocol = replace(FRESH, reference_seeds=tuple(range(args.reference_seeds)))
    start = time.perf_counter()
    combo = Combo(args.task, args.variant, TEST_DATA_SEED, suite.dataset, protocol, suite.reference,
                  on_event=lambda m: print(m, file=sys.stderr, flush=True))
    settings = [Setting(f"{name}|lr={lr:g}|steps={steps}", objective, lr, steps)
                for name, objective in LOSSES.items() for lr in args.lr for steps in args.steps]
    table = score_settings(combo, settings, suite.train)
    best_sft = max((s.label for s in settings if s.label.startswith("sft|")), key=lambda l: table.mean_ci(l)[0])
    rows = []
    for s in settings:
        mean, ci = table.mean_ci(s.label)
        rows.append({"setting": s.label, "score": mean, "ci95": ci, "ranking_accuracy": table.ranking_mean(s.label),
                     "minus_pi_ref": table.paired(s.label, "pi_ref"), "minus_best_sft": table.paired(s.label, best_sft),
                     "failure": table.failures.get(s.label, "")})
    out = {"benchmark": "pairwise_diagnosis", "task": args.task, "variant": args.variant,
           "protocol": protocol.describe(), "pi_ref": table.mean_ci("pi_ref"), "oracle": table.mean_ci("oracle"),
           "best_sft": best_sft, "rows": rows, "seconds": time.perf_counter() - start}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
