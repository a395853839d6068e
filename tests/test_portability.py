"""The same seed gives the same bits on every x86-64-v3 CPU (AVX2 and FMA): datasets and rollouts are
built in fresh processes under each OpenBLAS kernel this CPU can run (``OPENBLAS_CORETYPE``) and, on an
AVX-512 CPU, on the code paths numpy and glibc's libm take on an AVX2 CPU (``NPY_DISABLE_CPU_FEATURES``,
``GLIBC_TUNABLES``); their content hashes must agree with each other and with the hashes recorded on
another machine for the same numpy and MuJoCo. (Without FMA, glibc's libm, which MuJoCo calls, takes
other code paths: README, "Reproducibility across CPUs".)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import mujoco
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json
import numpy as np
from evaluators.datasets import DatasetConfig, content_hash, generate, parse_variant
from evaluators.native import NativeBatch, run_policies
from evaluators.policy import init_policy, stack
from evaluators.tasks import TASKS

hashes = {}
config = DatasetConfig(n_pairs=32, segment_length=20, max_prefix=40)
for task, variant in [("halfcheetah", "clean"), ("hopper", "stoch:0.05"), ("walker2d", "myopic:0.9")]:
    hashes[f"dataset {task} {variant}"] = content_hash(generate(TASKS[task], parse_variant(variant), 0, config))
task = TASKS["ant"]
params = stack([init_policy(np.random.default_rng([3, i]), task.obs_dim, task.act_dim, out_scale=1.0)
                for i in range(3)])
qpos, qvel = task.initial_states(19, seed=1)
with NativeBatch(task, 19, n_threads=2) as batch:
    run = run_policies(batch, params, np.arange(19) % 3, qpos, qvel, 60, np.random.default_rng(4), record=True)
hashes["rollout ant"] = content_hash({"returns": run.returns, "actions": run.actions, "qpos": run.final_qpos})
print(json.dumps(hashes))
"""

# Recorded on an AMD EPYC with AVX-512 (numpy's X86_V4 paths) and checked there under every setting below.
RECORDED = {
    "versions": {"numpy": "2.4.6", "mujoco": "3.17.0"},
    "hashes": {
        "dataset halfcheetah clean": "48c1bd712e18152e8f059febdff86148277357ea045a0d5f4a2f6409937bbaaf",
        "dataset hopper stoch:0.05": "24a8e61b09637742f7b51ad1f2effcc5bb40b6c813c4aa768a6bd48d2888636b",
        "dataset walker2d myopic:0.9": "e9760ea6eb62b76c3f2be4d306e72c15ed4ed746adc49d9fb796965c3013a975",
        "rollout ant": "93ac1d698459a03f60fcacf9b7f3ded20dab99b133039b1d163a6fecdf83528f",
    },
}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def settings() -> dict[str, dict[str, str]]:
    """Every OpenBLAS kernel this CPU can execute, and numpy's AVX2 paths where it has AVX-512."""
    flags = cpu_flags()
    cores = ["Prescott", "SandyBridge"] if "avx" in flags else ["Prescott"]
    if {"avx2", "fma"} <= flags:
        cores += ["Haswell", "Zen"]
    if "avx512f" in flags:
        cores.append("SkylakeX")
    out = {"default": {}} | {core: {"OPENBLAS_CORETYPE": core} for core in cores}
    if "avx512f" in flags:  # numpy's and glibc's libm code paths of an AVX2 CPU
        out["as an AVX2 CPU"] = {"NPY_DISABLE_CPU_FEATURES": "AVX512_ICL AVX512_SPR X86_V4",
                                 "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512BW,-AVX512VL,-AVX512CD"}
    return out


def hashes_under(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env, "PYTHONPATH": ROOT}, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_datasets_and_rollouts_have_the_same_bits_under_every_kernel():
    results = {name: hashes_under(env) for name, env in settings().items()}
    first = next(iter(results.values()))
    for name, hashes in results.items():
        assert hashes == first, f"{name} differs from default: {hashes} != {first}"
    versions = {"numpy": np.__version__, "mujoco": mujoco.__version__}
    if versions == RECORDED["versions"]:
        assert first == RECORDED["hashes"], "this CPU gives other bits than the machine the hashes were recorded on"


def test_xla_compiles_for_avx2_unless_told_otherwise():
    """Every package pins XLA's CPU target on import; a user's own --xla_cpu_max_isa wins."""
    code = "import os, discovery.search as s; print(os.environ.get('XLA_FLAGS', '')); print(s.code_version())"
    for flags, isa in [("", "AVX2"), ("--xla_cpu_max_isa=SSE4_2", "SSE4_2")]:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | ({"XLA_FLAGS": flags} if flags else {})
        done = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": ROOT}, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        xla_flags, version = done.stdout.strip().splitlines()[-2:]
        if platform.machine().lower() in ("x86_64", "amd64"):
            assert xla_flags.split() == [f"--xla_cpu_max_isa={isa}"] and version.endswith(f"xla-cpu={isa}")
        else:
            assert xla_flags == flags
