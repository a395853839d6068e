"""Does a cheap training budget rank candidates as the full one does? (multi-fidelity racing, issue 20)

Trains a population of varied candidates (the zoo, the found candidates of the archives given, GP
children of the zoo and ES-style constant perturbations of it, screened for a valid preference loss as
a search screens them) with the search protocol on the same units (validation data, pi_ref seed 0,
rung 0's training seeds, the same episodes) at each cheap PO step budget and at the full one, and
prints one JSON object: per cheap budget, Spearman's and Kendall's rank correlation with the full
score, and what a rung 0 at that budget would keep (of the full budget's top 5, how many a halving on the
cheap score keeps, and how many are in its own top 5), its cost against the full rung 0 in trained
steps and in seconds, and every candidate's scores. The ceiling of any such agreement is the full
budget's agreement with itself on other training seeds (the next rung's): the "retest" row, the same
figures with the full budget on rung 1's seeds in place of the cheap score.

    python benchmarks/fidelity.py --archive runs/archive.db --candidates 64 --cheap 75 150
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace

import numpy as np
from scipy.stats import kendalltau, spearmanr

from archive.store import ArchiveStore
from discovery.gp import GPConfig, perturb_constants, vary
from evaluators.fitness import FitnessConfig, FitnessEvaluator
from grammar.identity import dedupe_key
from grammar.validity import check
from grammar.zoo import ZOO

TOP = 5


def candidates(archives: list[str], n: int, seed: int) -> list[tuple[str, object]]:
    """(source, objective) for the zoo, the archives' found candidates, then GP children and constant
    perturbations of the zoo until there are ``n``; distinct forms only, each a valid preference loss."""
    out, seen = [], set()

    def add(source: str, objective) -> None:
        key = dedupe_key(objective)
        if key not in seen and len(out) < n:
            seen.add(key)
            out.append((source, objective))

    for name, baseline in ZOO.items():
        add(f"zoo:{name}", baseline.objective)
    for path in archives:
        with ArchiveStore(path, readonly=True) as store:
            for run in store.runs():
                for c in store.candidates(run["id"], status="evaluated"):
                    if c["origin"] != "zoo":
                        add(f"{path}#{c['id']}", c["objective"])
    rng = np.random.default_rng(seed)
    zoo = [b.objective for b in ZOO.values()]
    with_constants = [o for o in zoo if o.constants]
    cfg = GPConfig()
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        if rng.random() < 0.3:
            parent = with_constants[int(rng.integers(len(with_constants)))]
            child, source = perturb_constants(parent, rng, cfg, f"es{tries}"), "es-style constants"
        else:
            child, op, _ = vary(zoo, rng, cfg, f"gp{tries}")
            source = f"gp:{op}"
        if check(child, monotone=True, labels=True).ok:
            add(source, child)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", action="append", default=[], help="archives whose found candidates join")
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--cheap", type=int, nargs="+", default=[100, 150], help="cheap PO step budgets")
    ap.add_argument("--task", default="halfcheetah")
    ap.add_argument("--variant", default="noisy:0.2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    population = candidates(args.archive, args.candidates, args.seed)
    base = FitnessConfig(tasks=(args.task,), datasets=(args.variant,))
    full_steps = base.train.steps
    rung0, rung1 = tuple(range(base.seeds)), tuple(range(base.seeds, 2 * base.seeds))
    scores, seconds = {}, {}
    for name, steps, seeds in [*[(str(b), b, rung0) for b in args.cheap], ("full", full_steps, rung0),
                               ("retest", full_steps, rung1)]:
        evaluator = FitnessEvaluator(replace(base, train=replace(base.train, steps=steps)))
        start = time.perf_counter()
        results = evaluator.evaluate([o for _, o in population], train_seeds=seeds)
        seconds[name] = time.perf_counter() - start
        scores[name] = [ev.fitness for ev in results]
        print(f"{name}: {len(population)} candidates in {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    ok = [i for i in range(len(population)) if all(scores[s][i] is not None for s in scores)]
    full = np.array([scores["full"][i] for i in ok])
    full_top = set(np.argsort(-full)[:TOP])
    budgets = {}
    for name in [*map(str, args.cheap), "retest"]:
        cheap = np.array([scores[name][i] for i in ok])
        order = np.argsort(-cheap)
        budgets[name] = {
            "spearman": float(spearmanr(cheap, full).statistic),
            "kendall": float(kendalltau(cheap, full).statistic),
            "full_top5_kept_by_halving": len(full_top & set(order[: len(ok) // 2])),
            "full_top5_in_cheap_top5": len(full_top & set(order[:TOP])),
            "cost_vs_full": 1.0 if name == "retest" else int(name) / full_steps,
            "seconds_vs_full": round(seconds[name] / seconds["full"], 3),
        }
    out = {"benchmark": "fidelity", "machine": platform.platform(), "task": args.task, "variant": args.variant,
           "units": f"pi_ref seed 0 x training seeds {list(rung0)}, validation data", "full_steps": full_steps,
           "candidates": len(population), "scored": len(ok), "failed": len(population) - len(ok),
           "full_seconds": round(seconds["full"], 1), "budgets": budgets,
           "rows": [{"source": src, "formula": o.short_text(100), **{s: scores[s][i] for s in scores}}
                    for i, (src, o) in enumerate(population)]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
