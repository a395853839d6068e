"""Rollout throughput: the native closed-loop backend against open-loop ``mujoco.rollout``, and MJX.

Prints one JSON object. Per task:

- ``native``: env-steps/s of ``evaluators.native.run_policies`` (``mujoco.batch`` simulations, or for Ant
  state rows stepped on one ``MjData`` per lane, plus numpy inference of a batch of Gaussian MLP
  policies at every control step, two lanes overlapping physics and Python), and ``native_one_lane``
  the same with one lane (no overlap);
- ``open_loop``: ``mujoco.rollout`` of the same model from the same start states with the controls
  the closed loop produced (recorded as float32), on the same number of threads: the same physics
  work with no policy in the loop. ``ratio`` = native / open loop, the fraction of raw simulator throughput
  the closed loop keeps (best of ``--repeats`` interleaved runs, so both see the same contention);
  ``cpu_ratio`` = open-loop CPU seconds / native CPU seconds (all threads, best runs), which other
  processes on the machine disturb less than wall-clock time; ``ratio_one_thread`` = the same ratio for
  the first half of the batch on one thread each side (one lane): no core is shared, so it moves less from
  run to run than ``ratio`` and shows the closed loop's own Python cost; ``policy_us_per_step_one_thread``
  and ``policy_share_one_thread``: the policies' evaluation on that loop's grid timed alone, per step and
  as a share of the loop's time (other processes disturb it far less than the ratios);
- ``mjx``: ``mjx_run_policies`` at a small batch on the default JAX device, throughput without
  compilation, cold compile time (a fresh JAX cache directory unless ``--jax-cache project``) and
  the time to load the same executable from the persistent cache;
- ``mjx_gpu``: the same at batches ``--gpu-batches`` when JAX's default backend is a GPU.

Termination is switched off for the measurement, so every environment runs the full horizon and
both sides simulate the same number of steps. The machine's load average is recorded before and
after: other processes share the cores.

    python benchmarks/rollout.py --tasks hopper,ant --steps 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import timeit

import numpy as np

GPU_BATCHES = (1024, 2048, 4096, 8192, 16384)
N_POLICIES = 4  # env i runs policy i % N_POLICIES


def policies(task, n: int, seed: int = 0) -> dict:
    from evaluators.policy import init_policy, stack

    return stack([init_policy(np.random.default_rng([seed, i]), task.obs_dim, task.act_dim, out_scale=0.5)
                  for i in range(n)])


def start_states(task, batch: int):
    qpos, qvel = task.initial_states(batch, seed=0)
    return qpos, qvel, np.arange(batch) % N_POLICIES


def open_loop_inputs(task, model, qpos, qvel, actions):
    """Full physics start states as the native reset leaves them, and per-physics-step controls."""
    import mujoco

    d = mujoco.MjData(model)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    states = np.empty((len(qpos), mujoco.mj_stateSize(model, spec)))
    for i in range(len(qpos)):
        mujoco.mj_resetData(model, d)
        d.qpos[:], d.qvel[:] = qpos[i], qvel[i]
        mujoco.mj_forward(model, d)
        mujoco.mj_getState(model, d, states[i], spec)
    return states, np.repeat(np.asarray(actions, np.float64), task.frame_skip, axis=1)


def native_vs_open_loop(task, batch: int, steps: int, threads: int, repeats: int) -> dict:
    import mujoco
    from mujoco import rollout

    from evaluators.native import NativeBatch, run_policies
    from evaluators.policy import BatchedPolicies

    params = policies(task, N_POLICIES)
    qpos, qvel, idx = start_states(task, batch)
    half = max(1, batch // 2)
    wall = {k: [] for k in ("native", "native_one_lane", "open_loop", "native_one_thread", "open_loop_one_thread")}
    cpu = {"native": [], "open_loop": []}

    def timed(kind, f):
        w, c = time.perf_counter(), time.process_time()
        f()
        wall[kind].append(time.perf_counter() - w)
        if kind in cpu:
            cpu[kind].append(time.process_time() - c)

    with NativeBatch(task, batch, threads) as nb, NativeBatch(task, batch, threads, lanes=1) as one, \
            NativeBatch(task, half, 1) as single:
        for b in (nb, one):
            run_policies(b, params, idx, qpos, qvel, min(steps, 5))  # warm up threads and numpy
        recorded = run_policies(nb, params, idx, qpos, qvel, steps, record=True)
        assert int(recorded.lengths.sum()) == batch * steps, "termination must be off for the measurement"
        controls = recorded.actions
        model = nb.model
        states, control = open_loop_inputs(task, model, qpos, qvel, controls)
        datas = [mujoco.MjData(model) for _ in range(threads)]
        out = np.empty((batch, control.shape[1], states.shape[1]))
        # An env's actions do not depend on its batch-mates, so the first half replays the same controls.
        first = slice(0, half)
        for _ in range(repeats):
            timed("native", lambda: run_policies(nb, params, idx, qpos, qvel, steps))
            timed("open_loop", lambda: rollout.rollout(model, datas, states, control, state=out))
            timed("native_one_lane", lambda: run_policies(one, params, idx, qpos, qvel, steps))
            timed("native_one_thread",
                  lambda: run_policies(single, params, idx[first], qpos[first], qvel[first], steps))
            timed("open_loop_one_thread",
                  lambda: rollout.rollout(model, datas[:1], states[first], control[first], state=out[first]))
        lanes = len(nb.lanes)
        # The policy's own cost in the one-thread loop: its evaluation on that loop's (policies, rows) grid,
        # timed alone, which other processes disturb far less than the ratios.
        policies_alone = BatchedPolicies(params)
        rows = -(-half // N_POLICIES)
        grid = np.resize(recorded.observations[first, steps // 2].astype(np.float64), (N_POLICIES, rows, task.obs_dim))
        policy_s = min(timeit.repeat(lambda: policies_alone.mean(grid), number=200, repeat=5)) / 200
    rate = {k: (half if k.endswith("one_thread") else batch) * steps / min(v) for k, v in wall.items()}
    return {
        "batch": batch, "steps": steps, "threads": threads, "policies": N_POLICIES, "repeats": repeats,
        "lanes": lanes,
        "native_env_steps_per_s": round(rate["native"]),
        "native_one_lane_env_steps_per_s": round(rate["native_one_lane"]),
        "open_loop_env_steps_per_s": round(rate["open_loop"]),
        "open_loop_physics_steps_per_s": round(rate["open_loop"] * task.frame_skip),
        "ratio": round(rate["native"] / rate["open_loop"], 3),
        "ratio_one_lane": round(rate["native_one_lane"] / rate["open_loop"], 3),
        "ratio_one_thread": round(rate["native_one_thread"] / rate["open_loop_one_thread"], 3),
        "cpu_ratio": round(min(cpu["open_loop"]) / min(cpu["native"]), 3),
        "policy_us_per_step_one_thread": round(policy_s * 1e6, 1),
        "policy_share_one_thread": round(policy_s * steps / min(wall["native_one_thread"]), 4),
        **{f"{k}_s": [round(t, 3) for t in v] for k, v in wall.items()},
    }


def mjx_throughput(task, batch: int, steps: int) -> dict:
    from evaluators.mjx_backend import compilation_count, forget_compiled, mjx_run_policies

    qpos, qvel, idx = start_states(task, batch)

    def timed(seed: int) -> float:
        t0 = time.perf_counter()
        out = mjx_run_policies(task, policies(task, N_POLICIES, seed), idx, qpos, qvel, horizon=steps)
        assert int(out.lengths.sum()) == batch * steps
        return time.perf_counter() - t0

    before = compilation_count()
    first = timed(0)
    run = min(timed(1), timed(2))  # new policies of the same shape: no compilation
    compilations = compilation_count() - before
    forget_compiled()
    reload = timed(3)
    return {
        "batch": batch, "steps": steps,
        "env_steps_per_s": round(batch * steps / run),
        "run_s": round(run, 3),
        "compile_s": round(first - run, 2),
        "cache_load_s": round(reload - run, 2),
        "compilations_for_3_policy_batches": compilations,
    }


def configure_jax_cache(mode: str) -> str:
    """``cold``: a fresh temporary cache directory, so the first call really compiles."""
    import jax

    if mode == "cold":
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="mpo-bench-jax-"))
        compilation_cache.reset_cache()
    from evaluators.mjx_backend import enable_persistent_cache, persistent_cache_dir

    enable_persistent_cache()
    return persistent_cache_dir()


def parse_args(argv):
    from evaluators.native import default_threads
    from evaluators.tasks import MAX_EPISODE_STEPS, TASKS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    ap.add_argument("--steps", type=int, default=200, help="control steps per environment (native)")
    ap.add_argument("--batch", type=int, default=64, help="environments in the native batch")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mjx-batch", type=int, default=32)
    ap.add_argument("--mjx-steps", type=int, default=50)
    ap.add_argument("--gpu-batches", default=",".join(map(str, GPU_BATCHES)))
    ap.add_argument("--gpu-steps", type=int, default=MAX_EPISODE_STEPS)
    ap.add_argument("--no-mjx", action="store_true",
                    help="skip MJX (it compiles for about a minute per task on a CPU)")
    ap.add_argument("--jax-cache", choices=("cold", "project"), default="cold",
                    help="cold: compile into a fresh cache dir; project: use the persistent cache")
    args = ap.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if not names or unknown:
        ap.error(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    for flag in ("steps", "mjx_steps", "gpu_steps"):
        if not 1 <= getattr(args, flag) <= MAX_EPISODE_STEPS:
            ap.error(f"--{flag.replace('_', '-')} must be in [1, {MAX_EPISODE_STEPS}]")
    for flag in ("batch", "threads", "repeats", "mjx_batch"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        args.gpu_batches = [int(b) for b in args.gpu_batches.split(",")]
    except ValueError:
        ap.error("--gpu-batches must be comma-separated integers")
    if any(b < 1 for b in args.gpu_batches):
        ap.error("--gpu-batches must be positive")
    args.tasks = names
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from evaluators.tasks import get_task

    load_before = os.getloadavg()
    result = {"benchmark": "rollout",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_before": [round(x, 2) for x in load_before]},
              "tasks": {}}
    backend = None
    if not args.no_mjx:
        import jax

        backend = jax.default_backend()
        result["machine"].update(jax_backend=backend, jax_devices=[str(d) for d in jax.devices()],
                                 jax_cache_dir=configure_jax_cache(args.jax_cache), jax_cache=args.jax_cache)
    for name in args.tasks:
        task = dataclasses.replace(get_task(name), terminates=False)
        entry = {"native_vs_open_loop": native_vs_open_loop(task, args.batch, args.steps, args.threads,
                                                              args.repeats)}
        if not args.no_mjx:
            entry["mjx"] = {"device": backend, **mjx_throughput(task, args.mjx_batch, args.mjx_steps)}
            if backend == "gpu":
                entry["mjx_gpu"] = [mjx_throughput(task, b, args.gpu_steps) for b in args.gpu_batches]
        result["tasks"][name] = entry
        print(f"{name}: done", file=sys.stderr, flush=True)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    from evaluators.errors import SuiteError

    try:
        main()
    except (SuiteError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
