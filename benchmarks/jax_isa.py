"""Does the JAX side (pi_ref's behaviour cloning, preference-optimisation training) give the same bits when
XLA compiles for another instruction set? Prints one JSON object.

For each ``--xla_cpu_max_isa`` this CPU supports (and the default, XLA's own choice for this CPU), a fresh
process with an empty cache builds halfcheetah clean's dataset (numpy and MuJoCo), trains pi_ref by
behaviour cloning and DPO from it (JAX), and rolls the policies out on the native backend
(``discovery.api.score`` at 1 pi_ref seed x 2 training seeds x 2 episodes). It reports a content hash of
each row's returns (pi_ref's and the oracle's depend on behaviour cloning, DPO's also on its own training)
and DPO's mean score: which results carry over to a machine of another instruction set. (The datasets
and the rollouts of given parameters are the same on every x86-64-v3 CPU: ``tests/test_portability.py``.)

    python benchmarks/jax_isa.py --po-steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def probe(steps: int, cache: str) -> dict:
    """Score DPO and pi_ref on halfcheetah clean at a small protocol; hashes of every row's returns."""
    from discovery.api import score
    from evaluators.datasets import content_hash
    from evaluators.protocol import Protocol

    table = score({"dpo": "dpo"}, "halfcheetah", "clean", steps=steps, shuffled_control=False, cache=cache,
                  protocol=Protocol(reference_seeds=(0,), train_seeds=(0, 1), episodes=2, eval_seed=10_000))
    out = {f"{label} returns": content_hash({"r": table.returns[i]})[:16] for i, label in enumerate(table.labels)}
    out["dpo mean score"] = round(float(table.scores[table.index("dpo")].mean()), 6)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--po-steps", type=int, default=100, help="DPO training steps")
    ap.add_argument("--probe", metavar="CACHE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.po_steps, args.probe)))
        return
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isas = ["default", "SSE4_2", "AVX"] + (["AVX2"] if " avx2 " in flags else []) + \
        (["AVX512"] if " avx512f " in flags else [])
    results = {}
    for isa in isas:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        if isa != "default":
            env["XLA_FLAGS"] = f"--xla_cpu_max_isa={isa}"
        with tempfile.TemporaryDirectory() as cache:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--po-steps", str(args.po_steps),
                                   "--probe", cache],
                                  env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            results[isa] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        else:
            results[isa] = json.loads(done.stdout.strip().splitlines()[-1])
        print(isa, results[isa], file=sys.stderr, flush=True)
    fields = sorted({k for r in results.values() for k in r if k != "error"})
    same = {f: len({r.get(f) for r in results.values()}) == 1 for f in fields}
    print(json.dumps({"benchmark": "jax_isa", "machine": platform.processor() or platform.machine(),
                      "po_steps": args.po_steps, "results": results,
                      "same_under_every_isa": same}, indent=1))


if __name__ == "__main__":
    main()
