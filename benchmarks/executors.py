"""Candidates evaluated per second in-process and on a local Ray with 1 and 2 workers.

Prints one JSON object. The same population (the zoo, cycled) is evaluated on the search's fitness
settings (``--steps`` PO steps, chunks of ``--batch``), once to warm up (compilation, datasets and
pi_ref loaded in each worker) and then timed. On a machine with N cores Ray's workers share them with
each other (and with XLA's and MuJoCo's own threads), so this measures the scheduling overhead and
the parallel gain on one machine; a cluster adds nodes with ``discover run --executor ray
--ray-address ADDR``.

    python benchmarks/executors.py --population 8 --steps 50
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    args = ap.parse_args(argv)

    import ray

    from evaluators.executors import LocalExecutor, RayExecutor
    from evaluators.fitness import FitnessConfig, FitnessEvaluator
    from grammar.zoo import ZOO

    base = FitnessConfig()
    cfg = dataclasses.replace(base, batch=args.batch, train=dataclasses.replace(base.train, steps=args.steps))
    zoo = [b.objective for b in ZOO.values()]
    objectives = [zoo[i % len(zoo)] for i in range(args.population)]

    def rate(executor) -> tuple[float, list]:
        evaluator = FitnessEvaluator(cfg, executor=executor)
        evaluator.evaluate(objectives)  # warm-up: compilation, data and pi_ref in every worker
        t0 = time.perf_counter()
        out = evaluator.evaluate(objectives)
        return args.population / (time.perf_counter() - t0), [e.fitness for e in out]

    result = {"benchmark": "executors", "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "population": args.population, "batch": args.batch, "steps": args.steps, "tasks": cfg.tasks,
              "datasets": cfg.datasets}
    local_rate, local_fitness = rate(LocalExecutor())
    result["local_candidates_per_s"] = round(local_rate, 3)
    for n in [int(w) for w in args.workers.split(",")]:
        ray_rate, ray_fitness = rate(RayExecutor(num_cpus=n))
        ray.shutdown()
        result[f"ray_{n}_workers_candidates_per_s"] = round(ray_rate, 3)
        result[f"ray_{n}_workers_same_fitness"] = ray_fitness == local_fitness
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
