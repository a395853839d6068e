"""Population kernel vs one compilation per expression: candidates trained per second.

Prints one JSON object. The population path trains P different objectives (the baseline zoo, cycled
with perturbed constants when P exceeds it) in one call of the jit-compiled trainer; the separate
path builds a trainer around each expression's own lambdified JAX function, so every candidate pays a
compilation. The interpreter's efficiency is the warm time of a jit specialised to one loss (DPO)
divided by the interpreter's warm time on the same population of DPO (same shapes): 1.0 means
interpreting costs nothing. Memory: peak RSS on CPU, the device's peak bytes in use on GPU.

The trainer against this machine's limit: its achieved FLOP/s counts the policy's matmuls only (forward,
and backward as twice the forward: 6 x multiply-adds per row, rows = 2 sides x pairs per step x segment
steps), beside the FLOP/s of an XLA batched matmul of the hidden layer's shape (population x rows x width
@ width x width, float32, with its tanh) timed in the same process. Per candidate: the warm seconds of
a population of 1, 2, 4 and 8 trained as one vmapped call and as one call per candidate.

    python benchmarks/trainer.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import numpy as np


def peak_memory_bytes() -> dict:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for d in jax.devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            out[f"{d.platform}{d.id}_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--population", type=int, default=None)
    ap.add_argument("--separate", type=int, default=None, help="expressions compiled separately")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=None, help="default: the task's suite dataset")
    ap.add_argument("--task", default="halfcheetah", help="a task of the suite (its dataset, pi_ref and training)")
    ap.add_argument("--variant", default="noisy:0.2")
    args = ap.parse_args(argv)
    P = args.population or (16 if args.quick else 64)
    n_separate = args.separate or (2 if args.quick else 4)
    steps = args.steps or (50 if args.quick else 200)

    from dataclasses import replace

    from evaluators.datasets import build
    from evaluators.po_trainer import train_population
    from evaluators.policy import n_layers
    from evaluators.reference import reference_policy
    from evaluators.suite import task_suite
    from evaluators.tasks import get_task
    from grammar.compile import compile_jax
    from grammar.kernel import compilation_count, constant_vector, encode, interpret, stack
    from grammar.zoo import ZOO

    suite = task_suite(args.task)
    task = get_task(args.task)
    dataset = replace(suite.dataset, n_pairs=args.pairs) if args.pairs else suite.dataset
    ds = build(task, args.variant, 0, dataset)
    ref = reference_policy(ds, suite.reference)
    cfg = replace(suite.train, steps=steps)
    zoo = [b.objective for b in ZOO.values()]
    rng = np.random.default_rng(0)
    objectives = [zoo[i % len(zoo)] for i in range(P)]
    programs = stack([encode(o) for o in objectives])
    constants = np.stack([constant_vector(o) * (1 + 0.1 * rng.standard_normal() * (i >= len(zoo)))
                          for i, o in enumerate(objectives)])[:, None, :]
    seeds = np.arange(1)

    c0 = compilation_count()
    t0 = time.perf_counter()
    jax.block_until_ready(train_population(interpret, ds, ref, programs, constants, seeds, cfg).params)
    first = time.perf_counter() - t0
    compiles_first = compilation_count() - c0
    # A second, different population of the same size: no new compilation.
    shuffled = stack([encode(o) for o in reversed(objectives)])
    c1 = compilation_count()
    t0 = time.perf_counter()
    jax.block_until_ready(train_population(interpret, ds, ref, shuffled, constants[::-1], seeds, cfg).params)
    warm = time.perf_counter() - t0
    compiles_warm = compilation_count() - c1

    separate_times = []
    for obj in zoo[:n_separate]:
        f = compile_jax(obj)

        def kernel(program, variables, consts, f=f):
            return f(variables)

        t0 = time.perf_counter()
        jax.block_until_ready(train_population(kernel, ds, ref, _first(programs),
                                               constants[:1], seeds, cfg).params)
        separate_times.append(time.perf_counter() - t0)

    dpo = ZOO["dpo"].objective
    dpo_programs = stack([encode(dpo)] * P)
    dpo_constants = np.stack([constant_vector(dpo)] * P)[:, None, :]
    f_dpo = compile_jax(dpo)

    def specialised(program, variables, consts):
        return f_dpo(variables)

    def warm_seconds(kernel) -> float:
        jax.block_until_ready(train_population(kernel, ds, ref, dpo_programs, dpo_constants, seeds, cfg).params)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(train_population(kernel, ds, ref, dpo_programs, dpo_constants, seeds, cfg).params)
            best = min(best, time.perf_counter() - t0)
        return best

    interpreted_s, specialised_s = warm_seconds(interpret), warm_seconds(specialised)
    per_candidate = seconds_per_candidate(train_population, ds, ref, objectives, seeds, cfg)
    widths = [ref[f"w{i}"].shape for i in range(n_layers(ref))]
    rows = 2 * cfg.batch_pairs * dataset.segment_length
    trainer_flops = 6.0 * sum(a * b for a, b in widths) * rows * steps * P * len(seeds)
    matmul = matmul_flops_per_s(P, rows, widths[1][0] if len(widths) > 1 else widths[0][1])
    population_rate = P / warm
    separate_rate = n_separate / sum(separate_times)
    result = {
        "benchmark": "trainer",
        "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()]},
        "task": args.task, "dataset": args.variant, "pairs": ds.n_pairs,
        "segment_length": dataset.segment_length, "steps": steps,
        "batch_pairs": cfg.batch_pairs, "population": P,
        "population_first_call_s": round(first, 3),
        "population_compile_s": round(first - warm, 3),
        "population_warm_call_s": round(warm, 3),
        "population_candidates_per_s": round(population_rate, 3),
        "xla_compilations_first_call": compiles_first,
        "xla_compilations_new_population": compiles_warm,
        "separate_expressions": n_separate,
        "separate_s_per_candidate": [round(t, 3) for t in separate_times],
        "separate_candidates_per_s": round(separate_rate, 3),
        "speedup": round(population_rate / separate_rate, 2),
        "dpo_interpreted_warm_s": round(interpreted_s, 3),
        "dpo_specialised_warm_s": round(specialised_s, 3),
        "interpreter_efficiency": round(specialised_s / interpreted_s, 3),
        "policy_layers": [list(w) for w in widths],
        "trainer_gflops_per_s": round(trainer_flops / warm / 1e9, 3),
        "trainer_dpo_specialised_gflops_per_s": round(trainer_flops / specialised_s / 1e9, 3),
        "xla_matmul_gflops_per_s": round(matmul / 1e9, 3),
        "s_per_candidate_one_vmapped_call": per_candidate["vmapped"],
        "s_per_candidate_own_calls": per_candidate["own calls"],
        "trainer_share_of_matmul_rate": round(trainer_flops / warm / matmul, 3),
        **peak_memory_bytes(),
    }
    print(json.dumps(result, indent=1))
    return result


def matmul_flops_per_s(population: int, rows: int, width: int, repeats: int = 20) -> float:
    """Best FLOP/s of a jitted batched float32 matmul (population, rows, width) @ (population, width, width)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((population, rows, width)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((population, width, width)), jnp.float32)
    f = jax.jit(lambda x, w: jnp.tanh(x @ w))  # tanh keeps repeated products bounded, as in the policy
    jax.block_until_ready(f(x, w))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, w))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * population * rows * width * width / best


def seconds_per_candidate(train_population, ds, ref, objectives, seeds, cfg, sizes=(1, 2, 4, 8)) -> dict:
    """Warm seconds per candidate of a population of each size, trained as one vmapped call (what an
    accelerator does) and as one call per candidate (what `train_population` does on CPU)."""
    from evaluators import po_trainer
    from grammar.kernel import constant_vector, encode, interpret, stack

    out = {"vmapped": {}, "own calls": {}}
    default = po_trainer.one_call_per_candidate
    try:
        for path, own in (("vmapped", False), ("own calls", True)):
            po_trainer.one_call_per_candidate = lambda own=own: own
            for size in sizes:
                chosen = objectives[:size]
                programs = stack([encode(o) for o in chosen])
                constants = np.stack([constant_vector(o) for o in chosen])[:, None, :]
                jax.block_until_ready(train_population(interpret, ds, ref, programs, constants, seeds, cfg).params)
                t0 = time.perf_counter()
                jax.block_until_ready(train_population(interpret, ds, ref, programs, constants, seeds, cfg).params)
                out[path][size] = round((time.perf_counter() - t0) / size, 3)
    finally:
        po_trainer.one_call_per_candidate = default
    return out


def _first(programs):
    return jax.tree.map(lambda x: x[:1], programs)


if __name__ == "__main__":
    main()
