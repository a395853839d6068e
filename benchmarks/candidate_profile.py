"""Where a search candidate's time goes, and how many evaluations an hour a default run makes.

Prints one JSON object:

- ``first_evaluation``: the first batch a run evaluates (``FitnessEvaluator.evaluate`` on a new
  evaluator): one-off costs (dataset load, pi_ref fit or load, JIT compilation) beside the rest;
- ``population_1`` and ``population_<batch>``: a steady-state evaluation of 1 and of the default batch
  of candidates as a search generation does it, in seconds and shares per part (and the evaluations
  per hour that rate would give):
  screening and descriptors (the search's `discovery.screening.Screen`), pi_ref log-likelihoods,
  training, held-out ranking, rollouts, dataset load, the rest of the fitness code, and the commit
  (one archive transaction);
- ``search``: a default ``discover run`` (``SearchConfig()``) in a temporary archive: candidates trained
  per hour in the search generations and in generation 0 (the zoo), and the PO member-steps trained
  there with the share that was padding (`evaluators.po_trainer.member_steps`).

Parts are timed by wrapping the functions that do them wherever they are imported (exclusive time:
a part inside another is not counted twice). Candidates are the zoo's objectives. Datasets and pi_ref
come from the project cache (built there on first use, which ``first_evaluation`` then shows).

    python benchmarks/candidate_profile.py --search-evals 16
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import jax

# part -> the function (module, name) whose calls it is; parts found missing are reported, not fatal.
# JAX dispatches asynchronously: a part's time includes waiting for the arrays it returns.
TIMED = {
    "dataset load": ("evaluators.datasets", "build"),
    "pi_ref fit or load": ("evaluators.reference", "reference_policy"),
    "pi_ref log-likelihoods": ("evaluators.po_trainer", "reference_logps"),
    "training": ("evaluators.po_trainer", "train_population"),
    "held-out ranking": ("evaluators.po_trainer", "ranking_accuracy"),
    "rollouts": ("evaluators.scoring", "episode_returns"),
}
PACKAGES = ("evaluators", "discovery", "archive", "grammar")


class Parts:
    """Exclusive wall-clock seconds per part; parts nest, the innermost one is charged."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    @contextmanager
    def part(self, name: str):
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def instrument(parts: Parts) -> tuple[list[str], callable]:
    """Wrap every TIMED function in every loaded project module; returns (missing, undo)."""
    missing, undo = [], []
    for part, (module, name) in TIMED.items():
        original = getattr(importlib.import_module(module), name, None)
        if original is None:
            missing.append(f"{module}.{name}")
            continue

        def timed(*args, _f=original, _part=part, **kwargs):
            with parts.part(_part):
                return jax.block_until_ready(_f(*args, **kwargs))

        wrapper = functools.wraps(original)(timed)
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").split(".")[0] not in PACKAGES:
                continue
            for attr, value in list(vars(mod).items()):
                if value is original:
                    setattr(mod, attr, wrapper)
                    undo.append((mod, attr, original))
    return missing, lambda: [setattr(m, a, f) for m, a, f in undo]


def table(seconds: dict[str, float], candidates: int) -> dict:
    total = sum(seconds.values())
    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    return {"candidates": candidates, "total_s": round(total, 3),
            "per_candidate_s": round(total / max(candidates, 1), 3),
            "evaluations_per_hour": round(3600 * candidates / total) if total else None,
            "parts": {k: {"s": round(v, 3), "share": round(v / total, 3) if total else 0.0} for k, v in rows},
            "largest": rows[0][0] if rows else None}


def generation(parts: Parts, evaluator, store, run_id: int, objectives: list, names: list[str], g: int) -> dict:
    """One search generation's work on ``objectives``: screening (with descriptors), evaluation, commit."""
    from discovery.proposers import Proposed
    from discovery.screening import Screen

    screen = Screen(store, run_id, names, allow_non_monotone=True)  # zoo losses as proposals
    proposals = [Proposed(o, "profile") for o in objectives]
    with parts.part("screening and descriptors"):
        screened = screen(proposals, published=True)
    with parts.part("fitness, rest"):
        results = evaluator.evaluate([s.proposal.objective for s in screened])
    with parts.part("commit"), store.transaction():
        for s, ev in zip(screened, results):
            ok = not s.reason and ev.fitness is not None
            store.add_candidate(run_id, objective=s.proposal.objective, origin="profile", generation=g,
                                status="evaluated" if ok else "failed", reason=ev.failure or s.reason,
                                fitness=ev.fitness, ci95=ev.ci95, descriptors=s.descriptors, scores=ev.scores,
                                behaviour=s.behaviour, identity=s.proposal.identity)
    return table(parts.take(), len(objectives))


def default_search(cache: str | None, max_evaluations: int | None, max_seconds: float | None,
                   first_rung_steps: int | None = None) -> dict:
    """A default ``discover run`` (its search phase) in a temporary archive; ``first_rung_steps``: its
    screening rung's PO steps instead of the default's (0: none)."""
    from archive.store import ArchiveStore
    from archive.store import BASELINE_ORIGIN
    from discovery.search import Search, SearchConfig
    from evaluators.po_trainer import member_steps

    cfg = SearchConfig()
    cfg = dataclasses.replace(cfg, max_evaluations=max_evaluations or cfg.max_evaluations,
                              max_seconds=max_seconds or cfg.max_seconds,
                              first_rung_steps=cfg.first_rung_steps if first_rung_steps is None else first_rung_steps)
    seconds, trained = defaultdict(float), defaultdict(int)
    steps = {kind: defaultdict(int) for kind in ("zoo", "search")}
    with tempfile.TemporaryDirectory(prefix="mpo-profile-") as tmp, \
            ArchiveStore(os.path.join(tmp, "archive.db")) as store, \
            Search.start(store, cfg, cache=cache) as search:
        clock, counted = time.perf_counter(), member_steps()

        def on_generation(g):
            nonlocal clock, counted
            kind = "zoo" if g.proposer == BASELINE_ORIGIN else "search"
            seconds[kind] += time.perf_counter() - clock
            trained[kind] += g.evaluated
            now = member_steps()
            for key in now:
                steps[kind][key] += now[key] - counted[key]
            clock, counted = time.perf_counter(), now

        search.run(on_generation)
    rate = lambda kind: round(3600 * trained[kind] / seconds[kind]) if seconds[kind] else None
    padding = lambda kind: round(steps[kind]["padding"] / steps[kind]["trained"], 4) if steps[kind]["trained"] else None
    return {"config": {"tasks": list(cfg.fitness.tasks), "datasets": list(cfg.fitness.datasets),
                       "batch": cfg.fitness.batch, "max_evaluations": cfg.max_evaluations,
                       "max_seconds": cfg.max_seconds, "first_rung_steps": cfg.first_rung_steps},
            "zoo_generation": {"evaluated": trained["zoo"], "s": round(seconds["zoo"], 1),
                               "evaluations_per_hour": rate("zoo"), "member_steps": dict(steps["zoo"]),
                               "padding_share": padding("zoo")},
            "search_generations": {"evaluated": trained["search"], "s": round(seconds["search"], 1),
                                   "evaluations_per_hour": rate("search"), "member_steps": dict(steps["search"]),
                                   "padding_share": padding("search")}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=None, help="dataset/pi_ref cache directory (default: the project's)")
    ap.add_argument("--search-evals", type=int, default=None,
                    help="evaluation budget of the default run (default: its own)")
    ap.add_argument("--search-minutes", type=float, default=None, help="time budget of the default run")
    ap.add_argument("--no-search", action="store_true", help="skip the default run")
    ap.add_argument("--first-rung-steps", type=int, default=None,
                    help="the default run's screening rung in PO steps (default: its own; 0: none)")
    args = ap.parse_args(argv)

    from archive.descriptors import DEFAULT_DESCRIPTORS
    from archive.store import ArchiveStore
    from evaluators.fitness import FitnessConfig, FitnessEvaluator
    from grammar.zoo import ZOO

    parts = Parts()
    missing, undo = instrument(parts)
    cfg = FitnessConfig()
    zoo = [b.objective for b in ZOO.values()]
    batch = cfg.batch
    first, single, full = zoo[:batch], zoo[batch:batch + 1], [zoo[(batch + 1 + i) % len(zoo)] for i in range(batch)]
    result = {"benchmark": "candidate_profile",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_before": [round(x, 2) for x in os.getloadavg()]},
              "fitness": {"tasks": list(cfg.tasks), "datasets": list(cfg.datasets), "batch": batch,
                          "seeds": cfg.seeds, "episodes": cfg.episodes, "train_steps": cfg.train.steps},
              "untimed_parts": missing}
    try:
        evaluator = FitnessEvaluator(cfg, args.cache)
        with tempfile.TemporaryDirectory(prefix="mpo-profile-") as tmp, \
                ArchiveStore(os.path.join(tmp, "archive.db")) as store:
            run_id = store.create_run({"benchmark": "candidate_profile"}, 0, "profile")
            names = list(DEFAULT_DESCRIPTORS)
            for key, objectives, g in (("first_evaluation", first, 0), ("population_1", single, 1),
                                       (f"population_{batch}", full, 2)):
                objectives = [o.replace(name=f"{key}_{i}") for i, o in enumerate(objectives)]
                try:
                    result[key] = generation(parts, evaluator, store, run_id, objectives, names, g)
                except Exception as e:  # a benchmark reports what it could not measure
                    result[key] = {"error": f"{type(e).__name__}: {e}"}
                    parts.take()
                print(f"{key}: {result[key]}", file=sys.stderr, flush=True)
    finally:
        undo()
    if not args.no_search:
        minutes = args.search_minutes
        try:
            result["search"] = default_search(args.cache, args.search_evals, minutes * 60 if minutes else None,
                                              args.first_rung_steps)
        except Exception as e:  # a benchmark reports what it could not measure
            result["search"] = {"error": f"{type(e).__name__}: {e}"}
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
