"""The search loop: proposers -> validity -> population training -> SQLite archive, one generation at a time.

A run is a sequence of generations, each read as: pick -> ask -> screen -> evaluate -> tell -> commit.
Generation 0 asks the zoo proposer for the baselines (the seeds of GP and the yardstick of every
report). Each later generation is made by ONE proposer (`discovery.proposers`: ``gp``, ``es``, ``llm``
or any registered one), picked by the scheduler (`discovery.scheduler`) from the weights among the
available proposers, with a generator seeded by (run seed, generation); when it returns nothing (a
failed LLM call) the scheduler's fallback fills the generation.

Every proposal goes through one screening pipeline (`discovery.screening`: new form, valid preference
loss, descriptors, new behaviour). Fitness is raced (`discovery.racing`): the yardsticks at the cap,
every proposal at the first rung (after a screening rung with fewer PO steps under ``first_rung_steps``:
only the best third of it), the promising ones on more seeds. Every yardstick, and every proposal
whose raced score could enter the QD grid or the hall of fame's front, is then trained on the
label-shuffled data on its own units, and its fitness becomes what the labels add
(`evaluators.fitness.label_score`): the side channel (pi_ref's likelihood already ranks many pairs) no longer
wins the search. The proposer is then told the results, and its new state (JSON, ``proposer:<name>``)
is committed with the generation.
`final_report` ends a run (`discovery.report`).

Everything a generation produces (candidates, rejections, proposer state, counters) is written in ONE
transaction, so a killed process loses at most the generation in flight, and `resume` recomputes it
exactly: every random choice derives from (seed, generation) and the committed archive. The same seed
on the same backend therefore gives the same archive (under an evaluation budget; a time budget stops
wherever the clock says).  A generation trains no more candidates than the evaluation budget has left.

A run has one writer at a time (`ArchiveStore.lock_run`, taken by `start` and `resume`, released by
`close`).  A resumed run keeps its stored configuration; only the settings in `RESUMABLE` may change, and
those changes are kept for later resumes.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from archive.descriptors import parse_descriptor_specs
from archive.qd import HallOfFame, QDArchive
from archive.store import BASELINE_ORIGIN, PI_REF_KEY, RACING_KEY, REPORT_KEY, ArchiveStore, CandidateRecord
from discovery.es import STRATEGIES, ESConfig
from discovery.gp import GPConfig
from discovery.llm import LLMConfig
from discovery.proposers import REGISTRY, ArchiveView, Proposed, Proposer, ZooProposer
from discovery.racing import ETA, MIN_CI_UNITS, halve, rung_of, rung_seeds, rungs, separated
from discovery.scheduler import FALLBACK, Scheduler
from discovery.screening import Screen, Screened
from discovery.report import baseline_settings, best_baseline, build_report
from evaluators.datasets import parse_variant
from evaluators.fitness import SCREEN_RUNG, Evaluation, FitnessConfig, FitnessEvaluator, unit_scores
from evaluators.protocol import TEST_DATA_SEED, TEST_DATA_SEEDS, Setting, score_over_draws
from evaluators.suite import REPORTED_LOSSES, task_suite
from evaluators.xla_target import xla_cpu_isa
from grammar.identity import zoo_match
from grammar.objective import Objective
from grammar.zoo import ZOO

CHANGES_KEY = "config_changes"  # state: the settings changed on resume
REPORT_BASELINES = ("tuned", "default")

# The `discover run` option of each setting (dotted path into `SearchConfig.to_dict()`): errors name it,
# and a resumed run checks explicit options against the stored values.
OPTIONS: Mapping[str, str] = {
    "fitness.tasks": "--task", "fitness.datasets": "--dataset", "fitness.seeds": "--seeds",
    "fitness.episodes": "--episodes", "fitness.train.steps": "--steps", "fitness.dataset.n_pairs": "--pairs",
    "fitness.dataset.segment_length": "--segment-length", "fitness.reference.steps": "--reference-steps",
    "fitness.batch": "--batch", "fitness.backend": "--backend", "fitness.executor": "--executor",
    "fitness.ray_address": "--ray-address", "max_evaluations": "--budget-evals",
    "max_seconds": "--budget-minutes", "weights.gp": "--gp", "weights.es": "--es", "weights.llm": "--llm",
    "llm.provider": "--llm-provider", "llm.model": "--llm-model", "llm.base_url": "--llm-base-url",
    "llm.max_calls": "--llm-max-calls", "llm.timeout_s": "--llm-timeout", "es.strategy": "--es-strategy",
    "descriptors": "--descriptors", "baselines": "--baseline", "top_k": "--top-k", "fresh_seeds": "--fresh-seeds",
    "seed": "--seed", "max_seeds": "--max-seeds", "allow_non_monotone": "--allow-non-monotone",
    "holdouts": "--holdout", "report_baselines": "--report-baselines", "first_rung_steps": "--first-rung-steps",
}
RESUMABLE = ("max_evaluations", "max_seconds", "llm.max_calls", "llm.timeout_s", "fitness.executor",
             "fitness.ray_address")  # may change on resume (the executor changes no result)
_FITNESS_OPTIONS = {"tasks": "--task", "datasets": "--dataset", "dataset": "--pairs/--segment-length",
                    "reference": "--reference-steps", "backend": "--backend", "seeds": "--seeds",
                    "episodes": "--episodes", "batch": "--batch", "executor": "--executor"}  # field -> option


@contextmanager
def _option(flag: str) -> Iterator[None]:
    """Prefix an error raised inside with the option it is about."""
    try:
        yield
    except (ValueError, KeyError) as e:
        raise ValueError(f"{flag}: {e.args[0] if isinstance(e, KeyError) else e}") from None


@dataclass(frozen=True)
class SearchConfig:
    fitness: FitnessConfig = FitnessConfig()
    seed: int = 0
    max_evaluations: int | None = 48  # candidates trained, baselines excluded
    max_seconds: float | None = 90.0  # wall-clock of the search phase, summed over resumes (generation 1 always runs)
    weights: Mapping[str, float] = field(default_factory=lambda: {"gp": 0.7, "es": 0.3, "llm": 0.0})
    gp: GPConfig = GPConfig()
    es: ESConfig = ESConfig()
    llm: LLMConfig = LLMConfig()
    descriptors: str = "complexity,saturation"  # QD grid axes, see archive.descriptors.parse_descriptor_specs
    tournament: int = 3
    baselines: tuple[str, ...] = REPORTED_LOSSES  # zoo names evaluated in generation 0 (empty: the whole zoo)
    top_k: int = 3  # elites re-evaluated on fresh seeds at the end
    fresh_seeds: int = 3  # pi_ref seeds of the final report (the suite check uses 5)
    max_seeds: int = 4  # racing cap: training seeds a promising candidate may get (rungs double from fitness.seeds)
    first_rung_steps: int = 0  # > 0: racing screens with these PO steps before rung 0 (multi-fidelity, `racing`)
    allow_non_monotone: bool = False  # search losses that are not monotone in the preferences too
    holdouts: tuple[str, ...] = ()  # "task:variant" combos scored only in the final report
    report_baselines: str = "tuned"  # baselines of the final report: "tuned" (suite.tune) or "default"

    def rungs(self) -> list[int]:
        return rungs(self.fitness.seeds, self.max_seeds)

    @property
    def space(self) -> str:
        return "any loss (--allow-non-monotone)" if self.allow_non_monotone else "monotone preference losses"

    def validate(self) -> None:
        """Raise ValueError naming the `discover run` option (`OPTIONS`) of the first bad setting; nothing
        is built or opened."""
        fc = self.fitness
        for name, flag in _FITNESS_OPTIONS.items():  # each setting on its own, so the error names its option
            with _option(flag):
                dataclasses.replace(FitnessConfig(), **{name: getattr(fc, name)}).validate()
        fc.validate()
        for flag, value, low in (("--steps", fc.train.steps, 1), ("--top-k", self.top_k, 1),
                                 ("--fresh-seeds", self.fresh_seeds, 2)):
            if value < low:
                raise ValueError(f"{flag}: must be at least {low}, got {value}")
        if not 0 <= self.first_rung_steps < fc.train.steps:
            raise ValueError(f"--first-rung-steps: must be 0 (off) or below --steps ({fc.train.steps}), "
                             f"got {self.first_rung_steps}")
        if self.max_seeds < fc.seeds:
            raise ValueError(f"--max-seeds: must be at least --seeds ({fc.seeds}), got {self.max_seeds}")
        with _option("--holdout"):
            for h in self.holdouts:
                parse_holdout(h)
        if self.report_baselines not in REPORT_BASELINES:
            raise ValueError(f"--report-baselines: use {' or '.join(REPORT_BASELINES)}, got {self.report_baselines!r}")
        with _option("--descriptors"):
            parse_descriptor_specs(self.descriptors)
        unknown = [n for n in self.weights if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown proposer(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
        for name, weight in self.weights.items():
            if not weight >= 0:
                raise ValueError(f"--{name}: a proposer weight must be >= 0, got {weight}")
        if sum(self.weights.values()) <= 0:
            raise ValueError("--gp/--es/--llm: every proposer weight is 0; give at least one a positive weight")
        missing = [n for n in self.baselines if n not in ZOO]
        if missing:
            raise ValueError(f"--baseline: unknown {', '.join(map(repr, missing))}; the zoo has {', '.join(ZOO)}")
        if self.max_evaluations is None and self.max_seconds is None:
            raise ValueError("--budget-evals/--budget-minutes: both are 0 (no limit): give at least one budget")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ValueError(f"--budget-evals: must be at least 1 (0: no limit), got {self.max_evaluations}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"--budget-minutes: must be more than 0 (0: no limit), got {self.max_seconds / 60:g}")
        if self.es.strategy not in STRATEGIES:
            raise ValueError(f"--es-strategy: unknown strategy {self.es.strategy!r}; "
                             f"use one of {', '.join(STRATEGIES)}")
        self.llm.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping) -> SearchConfig:
        return _from_dict(cls, data)

    def get(self, setting: str) -> Any:
        """A setting by its dotted path in `to_dict()` (e.g. "fitness.tasks"), as JSON stores it."""
        value: Any = self.to_dict()
        for key in setting.split("."):
            if value is None:  # an optional part left at its default (e.g. each task's suite dataset)
                return None
            value = value[key]
        return list(value) if isinstance(value, tuple) else value

    def with_settings(self, settings: Mapping[str, Any]) -> SearchConfig:
        """A copy with settings changed by dotted path."""
        data = self.to_dict()
        for setting, value in settings.items():
            *parents, last = setting.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[last] = value
        return SearchConfig.from_dict(data)


def _state_key(proposer: str) -> str:
    return f"proposer:{proposer}"


def parse_holdout(spec: str) -> tuple[str, str]:
    """"task:variant" (the variant may hold colons, e.g. walker2d:noisy:0.2) -> (task, variant), checked."""
    task, sep, variant = spec.partition(":")
    if not sep or not variant:
        raise ValueError(f"{spec!r} is not TASK:VARIANT (e.g. walker2d:noisy:0.2, lm:clean)")
    if task == LM_TASK:
        from evaluators.language.data import parse_lm_variant

        if parse_lm_variant(variant).shuffled:
            raise ValueError(f"{spec!r}: the shuffled twins are trained beside every finalist; give the variant alone")
        return task, variant
    task_suite(task)
    parse_variant(variant)
    return task, variant


LM_TASK = "lm"


def language_table(settings: list[Setting], names: tuple[str, ...], mode: str, variant: str, protocol, on_event):
    """The language suite as a held-out column: the finalists (each at the learning rate of the language grid
    that scores best on the validation data seed, constants as found) with their shuffled twins, and the
    reported losses (tuned on the language suite, or at its default learning rate), paired over the units."""
    from evaluators.language import suite as lm

    finalists = [lm.tune_lr(s.label, s.objective, variant, on_event=on_event) for s in settings]
    if mode == "tuned":
        base = lm.tuned_baselines(variant, names, on_event=on_event)
    else:
        base = [Setting(f"{n} (default)", ZOO[n].objective, lm.LM_SUITE.default_lr, 0) for n in names]
    return lm.score_settings(finalists + base, variant, TEST_DATA_SEED, protocol,
                             shuffled_control=tuple(s.label for s in finalists), on_event=on_event)


def _from_dict(cls, data: Mapping):
    """A (nested) frozen dataclass from `dataclasses.asdict` output; lists become tuples where typed so."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        optional = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(optional) == 1 and dataclasses.is_dataclass(optional[0]):  # `SomeConfig | None`
            if value is None:
                kwargs[f.name] = None
                continue
            hint = optional[0]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout, and XLA's CPU target (results are
    the same bits only between runs on the same target: README, "Reproducibility across CPUs")."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("mpo-discover")
    except PackageNotFoundError:
        v = "unknown"
    try:
        here = __file__.rsplit("/", 2)[0]
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    version = f"{v}+{commit}{'-dirty' if dirty else ''}" if commit else v
    return f"{version} xla-cpu={xla_cpu_isa()}"


@dataclass
class Generation:
    """What one generation did, for the live view."""

    index: int
    proposer: str
    evaluated: int
    rejected: int
    improved: list[int]  # candidate ids that entered the QD grid as new or better elites
    note: str = ""


@dataclass
class _Pending:
    """A generation's writes, held until they are committed together."""

    report: Generation
    rows: list[tuple[Proposed, dict]] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)
    exchange: object | None = None  # discovery.llm.Exchange

    def add(self, p: Proposed, reason: str, ev: Evaluation | None, descriptors: dict | None,
            behaviour: str | None = None) -> None:
        if reason:
            self.rows.append((p, {"status": "rejected", "reason": reason}))
            return
        units = len(ev.unit_scores())
        screened = ev.fitness is None and not ev.failure  # trained on the screening rung only
        status = "failed" if ev.failure else "screened" if screened else "evaluated"
        reason = ev.failure or (f"{ev.first_rung_fitness():.1f} after {ev.scores[0]['steps']} PO steps, not in "
                                f"the best 1/{ETA} of its generation" if screened else "")
        self.rows.append((p, {"status": status, "reason": reason,
                              "fitness": ev.fitness, "ci95": ev.ci95 if units >= MIN_CI_UNITS else None,
                              "descriptors": descriptors, "scores": ev.scores, "behaviour": behaviour,
                              "units": units, "controlled": None if screened else ev.controlled}))


class Search:
    """One run of the search over an open `ArchiveStore`; create with `start` or `resume`."""

    def __init__(self, store: ArchiveStore, run_id: int, cfg: SearchConfig, *, cache: str | None = None,
                 llm_client=None, llm_http_client=None, llm_replay: list[dict] | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.store, self.run_id, self.cfg = store, run_id, cfg
        self.on_event = on_event or (lambda msg: None)
        self.evaluator = FitnessEvaluator(cfg.fitness, cache, on_event=self.on_event)
        self.specs = parse_descriptor_specs(cfg.descriptors)
        self.qd = QDArchive.from_store(store, run_id, self.specs)
        self.hall = HallOfFame.from_store(store, run_id)
        resources = dict(llm_client=llm_client, llm_http_client=llm_http_client, llm_replay=llm_replay,
                         exchanges=store.exchanges(run_id))
        names = [n for n, w in cfg.weights.items() if w > 0] + [FALLBACK]
        self.proposers: dict[str, Proposer] = {n: REGISTRY[n](cfg, **resources) for n in dict.fromkeys(names)}
        self.proposers[BASELINE_ORIGIN] = ZooProposer(cfg)
        stored = {n: store.get_state(run_id, _state_key(n)) for n in self.proposers}
        self.states = {n: p.initial_state() if stored[n] is None else stored[n] for n, p in self.proposers.items()}
        self.scheduler = Scheduler(cfg.weights, self.proposers)
        self.screen = Screen(store, run_id, [spec.name for spec in self.specs], cfg.allow_non_monotone)
        self._session_start = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, store: ArchiveStore, cfg: SearchConfig, **kw) -> Search:
        cfg.validate()
        with store.transaction():
            run_id = store.create_run(cfg.to_dict(), cfg.seed, code_version())
            store.lock_run(run_id)
        return cls(store, run_id, cfg, **kw)

    @staticmethod
    def stored_config(store: ArchiveStore, run_id: int) -> SearchConfig:
        """The configuration a resumed run continues with: as started, with the changes of earlier resumes."""
        changes = store.get_state(run_id, CHANGES_KEY, {})
        return SearchConfig.from_dict(store.run(run_id)["config"]).with_settings(changes)

    @classmethod
    def resume(cls, store: ArchiveStore, run_id: int | None = None, *, changes: Mapping[str, Any] | None = None,
               **kw) -> Search:
        """Continue a run (default: the latest) with its stored configuration.  `changes` (dotted setting ->
        value) may touch only `RESUMABLE` settings; they are kept for later resumes.  Raises ArchiveError
        when another process writes the run."""
        run = store.run(run_id) if run_id is not None else store.latest_run()
        if run is None:
            raise ValueError("the archive holds no run to resume")
        changes = dict(changes or {})
        for setting in changes:
            if setting not in RESUMABLE:
                raise ValueError(f"{OPTIONS.get(setting, setting)}: a resumed run keeps its stored setting; only "
                                 f"{', '.join(OPTIONS[r] for r in RESUMABLE)} may change")
        cfg = cls.stored_config(store, run["id"]).with_settings(changes)
        cfg.validate()
        with store.transaction():
            store.lock_run(run["id"])
            if changes:
                store.put_state(run["id"], CHANGES_KEY, {**store.get_state(run["id"], CHANGES_KEY, {}), **changes})
            store.set_run_status(run["id"], "running")
        return cls(store, run["id"], cfg, **kw)

    def close(self) -> None:
        """Release the run lock (and what the proposers hold); the store stays open."""
        for proposer in self.proposers.values():
            proposer.close()
        self.store.unlock_run(self.run_id)

    def __enter__(self) -> Search:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ budget and counters
    @property
    def generation(self) -> int:
        """Index of the next generation."""
        return self.store.last_generation(self.run_id) + 1

    def elapsed(self) -> float:
        return float(self.store.get_state(self.run_id, "elapsed", {"seconds": 0.0})["seconds"]) + \
            time.monotonic() - self._session_start

    def evaluations(self) -> int:
        """Candidates trained so far, baselines excluded."""
        return int(self.store.get_state(self.run_id, "evaluations", {"count": 0})["count"])

    def evaluations_left(self) -> int | None:
        """What the evaluation budget has left (None: no such budget)."""
        if self.cfg.max_evaluations is None:
            return None
        return max(0, self.cfg.max_evaluations - self.evaluations())

    def room(self) -> int:
        """Candidates a GP or LLM generation may train: the batch, or less when the budget has less left."""
        left = self.evaluations_left()
        return self.cfg.fitness.batch if left is None else min(self.cfg.fitness.batch, left)

    def trained(self) -> int:
        """Objectives trained so far, baselines included (for the rate of the live view)."""
        counts = self.store.status_counts(self.run_id)
        return counts["evaluated"] + counts["screened"] + counts["failed"]

    def budget_left(self) -> bool:
        cfg = self.cfg
        if cfg.max_evaluations is not None and self.evaluations() >= cfg.max_evaluations:
            return False
        # a time budget never stops a run before its first search generation (generation 1)
        return cfg.max_seconds is None or self.generation <= 1 or self.elapsed() < cfg.max_seconds

    @property
    def llm_note(self) -> str:
        """Why the LLM proposer is off, when it was asked for ('' otherwise)."""
        llm = self.proposers.get("llm")
        return getattr(llm, "off", "") if llm is not None else ""

    def best_baseline(self) -> tuple[str, float] | None:
        """(name, fitness) of the fittest baseline of generation 0."""
        c = self.store.best_baseline(self.run_id)
        return (c["objective"].name, c["fitness"]) if c else None

    def pi_ref_fitness(self) -> float | None:
        return (self.store.get_state(self.run_id, PI_REF_KEY) or {}).get("fitness")

    def best(self) -> CandidateRecord | None:
        """The fittest discovered (non-baseline) candidate."""
        return self.store.best_found(self.run_id)

    # ------------------------------------------------------------------ one generation
    def run(self, on_generation: Callable[[Generation], None] | None = None) -> list[Generation]:
        """Generations until the budget is spent. KeyboardInterrupt leaves the run resumable ("interrupted"),
        any other exception marks it "failed" (resumable too)."""
        done = []
        try:
            while self.budget_left():
                g = self.step()
                done.append(g)
                if on_generation:
                    on_generation(g)
        except KeyboardInterrupt:
            self.store.set_run_status(self.run_id, "interrupted")
            raise
        except Exception:
            self.store.set_run_status(self.run_id, "failed")
            raise
        return done

    def view(self) -> ArchiveView:
        """What proposers may read of the run, as it stands before the next generation."""
        return ArchiveView(self.store, self.run_id, self.cfg, self.qd, self.hall, self.generation, self.room(),
                           self.evaluations_left())

    def step(self) -> Generation:
        """Pick a proposer, ask it, screen and train its proposals, tell it the results, then write all of
        the generation (its state included) in ONE transaction.

        Training happens outside the transaction, so the archive is never locked for long and readers
        (`discover archive list`) always see whole generations.
        """
        g = self.generation
        rng = np.random.default_rng([self.cfg.seed, g])
        view = self.view()
        chain = [BASELINE_ORIGIN] if g == 0 else self.scheduler.chain(self.scheduler.pick(self.states, view, rng))
        self.on_event(f"generation {g}: {chain[0]}")
        notes, exchange = [], None
        for i, name in enumerate(chain):
            proposer = self.proposers[name]
            asked = proposer.ask(self.states[name], view, rng)
            exchange = exchange or asked.exchange
            notes += [asked.note] if asked.note else []
            if asked.proposals or i == len(chain) - 1:
                break
            notes.append(f"{chain[i + 1]} filled the generation")
        pending = _Pending(Generation(g, name, 0, 0, [], "; ".join(notes)), exchange=exchange)
        screened = self.screen(asked.proposals, published=proposer.published)
        results = self._evaluate(proposer, screened, pending)
        for s, ev in zip(screened, results):
            pending.add(s.proposal, s.reason, ev, s.descriptors, s.behaviour)
        state = proposer.tell(asked.state, results)
        pending.state[_state_key(name)] = state
        self._commit(g, pending)
        self.states[name] = state
        return pending.report

    def _commit(self, g: int, pending: _Pending) -> None:
        added = []
        with self.store.transaction():
            exchange_id = None
            if pending.exchange is not None:
                exchange_id = self.store.add_exchange(self.run_id, **pending.exchange.to_dict())
            trained = 0
            for p, fields in pending.rows:
                cid = self.store.add_candidate(self.run_id, objective=p.objective, origin=p.origin, generation=g,
                                               parents=p.parents, exchange_id=exchange_id if p.from_llm else None,
                                               identity=p.identity, **fields)
                added.append((cid, p, fields))
                trained += fields["status"] != "rejected" and p.origin != BASELINE_ORIGIN
            pending.state["evaluations"] = {"count": self.evaluations() + trained}
            pending.state["elapsed"] = {"seconds": self.elapsed()}
            for key, value in pending.state.items():
                self.store.put_state(self.run_id, key, value)
        self._session_start = time.monotonic()
        report = pending.report
        for cid, p, fields in added:
            if fields["status"] == "rejected":
                report.rejected += 1
                continue
            report.evaluated += 1
            if fields["fitness"] is not None:
                if str(self.qd.add(cid, fields["fitness"], fields["descriptors"])) in ("new", "improved"):
                    report.improved.append(cid)
                self.hall.add(cid, fields["fitness"], p.identity.complexity)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, proposer: Proposer, screened: list[Screened], pending: _Pending) -> list:
        """One Evaluation per screened proposal (None for a rejected one): the yardsticks on every seed,
        in populations of at most the batch; proposals raced. Then the label-shuffled twins of those that
        could enter the elites (all yardsticks), on their own units."""
        trainable = [s for s in screened if not s.reason]
        objectives = [s.proposal.objective for s in trainable]
        if not objectives:
            results, batch = [], 1
        elif not proposer.raced:
            batch = min(len(objectives), self.cfg.fitness.batch)
            results = self.evaluator.evaluate(objectives, train_seeds=tuple(range(self.cfg.max_seeds)), batch=batch)
            results = [self._tag_rungs(ev) for ev in results]
            pending.state[PI_REF_KEY] = {"fitness": self.evaluator.pi_ref}
        else:
            results, batch = self._race(objectives, pending), math.ceil(self.cfg.fitness.batch / ETA)
        chosen = [i for i, (s, ev) in enumerate(zip(trainable, results))
                  if ev.fitness is not None and (not proposer.raced or self._could_enter(ev.fitness, s))]
        results = self._control(objectives, results, chosen, batch, pending, proposer.raced)
        results = iter(results)
        return [None if s.reason else next(results) for s in screened]

    def _could_enter(self, fitness: float, screened: Screened) -> bool:
        """Whether a candidate of this fitness (an upper bound of its figure once controlled) could enter the
        QD grid or the hall of fame's front."""
        return (self.qd.would_improve(fitness, screened.descriptors)
                or self.hall.would_join_front(fitness, screened.proposal.identity.complexity))

    def _control(self, objectives: list[Objective], results: list[Evaluation], chosen: list[int], batch: int,
                 pending: _Pending, found: bool = True) -> list[Evaluation]:
        """Train the ``chosen`` candidates' label-shuffled twins on each one's own units (candidates with the same
        training seeds together) and fold them in (``Evaluation.with_control``): their fitness then counts only
        what the labels add. Counts the twins' seed units (found candidates' and the yardsticks' apart)."""
        by_seeds: dict[tuple[int, ...], list[int]] = {}
        for i in chosen:
            by_seeds.setdefault(tuple(sorted({int(r["seed"]) for r in results[i].scores})), []).append(i)
        results = list(results)
        units = 0
        for seeds, members in by_seeds.items():
            twins = self.evaluator.evaluate([objectives[i] for i in members], train_seeds=seeds, batch=batch,
                                            shuffled=True)
            for i, twin in zip(members, twins):
                results[i] = results[i].with_control(twin)
                units += len(twin.scores)
        self._count(pending, **{"control_units" if found else "yardstick_control_units": units})
        return results

    def _count(self, pending: _Pending, **added: int) -> None:
        """Add to the run's seed-unit counters (``RACING_KEY``), committed with the generation."""
        racing = dict(pending.state.get(RACING_KEY) or self.store.get_state(self.run_id, RACING_KEY,
                                                                          {"units": 0, "at_cap": 0}))
        pending.state[RACING_KEY] = {**racing, **{k: racing.get(k, 0) + v for k, v in added.items()}}

    # ------------------------------------------------------------------ racing
    def _tag_rungs(self, ev: Evaluation) -> Evaluation:
        all_rungs = self.cfg.rungs()
        for row in ev.scores:
            row["rung"] = rung_of(row["seed"], all_rungs)
        return ev

    def _incumbent(self) -> dict | None:
        """Unit scores of the fittest candidate scored at the cap (the yardstick of racing)."""
        for c in self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True,
                                       with_objective=False):
            at_cap = (c["units"] or 0) >= self.cfg.max_seeds * self.cfg.fitness.reference_seeds
            if at_cap and c["controlled"] is not False:
                return unit_scores(self.store.scores(c["id"], fresh=False))
        return None

    def _race(self, objectives: list[Objective], pending: _Pending) -> list[Evaluation]:
        """Rung 0 for every objective (after a screening rung with fewer PO steps, only for the best 1/ETA by
        it), then later rungs for the survivors (`discovery.racing`); counts the seed units trained (full
        steps, and screening apart) against evaluating every objective at the cap."""
        if not objectives:
            return []
        all_rungs, few = self.cfg.rungs(), math.ceil(self.cfg.fitness.batch / ETA)
        incumbent = self._incumbent()
        if self.cfg.first_rung_steps and len(objectives) > 1:  # a lone candidate goes on anyway
            screen = self.evaluator.evaluate(objectives, train_seeds=rung_seeds(all_rungs, 0),
                                             steps=self.cfg.first_rung_steps)
            for ev in screen:
                for row in ev.scores:
                    row["rung"] = SCREEN_RUNG
            alive = halve([ev.fitness for ev in screen])
            results = [Evaluation(None, None, ev.scores, ev.failure) for ev in screen]  # no fitness unless raced on
            full = self.evaluator.evaluate([objectives[i] for i in alive], train_seeds=rung_seeds(all_rungs, 0),
                                           batch=few) if alive else []  # every screen run may have failed
            for i, ev in zip(alive, full):
                results[i] = Evaluation(None, None, screen[i].scores).extended(self._tag_rungs(ev))
            self._count(pending, screen_units=sum(len(ev.scores) for ev in screen))
        else:
            results = [self._tag_rungs(ev) for ev in
                       self.evaluator.evaluate(objectives, train_seeds=rung_seeds(all_rungs, 0))]
            alive = halve([ev.fitness for ev in results])
        for k in range(1, len(all_rungs)):
            alive = [i for i in alive if results[i].fitness is not None
                     and not (k > 1 and incumbent and separated(results[i].unit_scores(), incumbent))]
            if not alive:
                break
            more = self.evaluator.evaluate([objectives[i] for i in alive], train_seeds=rung_seeds(all_rungs, k),
                                           batch=few)
            for i, ev in zip(alive, more):
                results[i] = results[i].extended(self._tag_rungs(ev))
        per_candidate = len(self.evaluator.combos()) * self.cfg.fitness.reference_seeds
        self._count(pending, units=sum(len(ev.unit_scores()) for ev in results) * len(self.evaluator.combos()),
                    at_cap=len(objectives) * self.cfg.max_seeds * per_candidate)
        return results

    # ------------------------------------------------------------------ the final report
    def finalists(self) -> list[CandidateRecord]:
        """The top-k found candidates of distinct behaviour whose fitness counts only what the labels add
        (twins trained), those raced to the cap first, by fitness."""
        found = [c for c in self.store.candidates(self.run_id, status="evaluated", order_by="fitness",
                                                  descending=True)
                 if c["origin"] != BASELINE_ORIGIN and c["controlled"] is not False]
        cap = self.cfg.max_seeds * self.cfg.fitness.reference_seeds
        found.sort(key=lambda c: (c["units"] or 0) < cap)  # stable: by fitness within each group
        out, behaviours = [], set()
        for c in found:
            key = c["behaviour"] or c["structure_hash"]  # archives before fingerprints: by structure
            if key not in behaviours:
                out.append(c)
                behaviours.add(key)
            if len(out) == self.cfg.top_k:
                break
        return out

    def zoo_origin(self, candidate: CandidateRecord) -> tuple[str | None, str | None]:
        """(zoo structure, origin) of a candidate: "apo_zero at β 0.0127" when its structure is a zoo loss's
        (else None), and the zoo loss it comes from: that one, else its nearest zoo ancestor (lineage)."""
        match = zoo_match(candidate["objective"], candidate.get("structure_hash"))
        if match:
            return match.describe(), match.name
        roots = [c["objective"].name for c in self.store.lineage(candidate["id"])[1:] if c["origin"] == BASELINE_ORIGIN]
        return None, (roots[0] if roots and roots[0] in ZOO else None)

    def final_report(self) -> dict:
        """Finalists, baselines, pi_ref and the oracle on the test data seeds with fresh seeds, controls and
        held-out combos (`discovery.report`); stored in the run's state and returned."""
        cfg, fc = self.cfg, self.cfg.fitness
        chosen = self.finalists()
        finalists = []
        for c in chosen:
            structure, origin = self.zoo_origin(c)
            finalists.append({"label": f"#{c['id']}", "id": c["id"], "formula": c["objective"].short_text(120),
                              "search": c["fitness"], "search_ci": c["ci95"], "units": c["units"],
                              "rung0": Evaluation(None, None,
                                                  self.store.scores(c["id"], fresh=False)).first_rung_fitness(),
                              "zoo_structure": structure, "origin": origin})
        settings = [Setting(f["label"], c["objective"], fc.train.lr, fc.train.steps) for f, c in zip(finalists, chosen)]
        names = cfg.baselines or tuple(ZOO)  # what the run started from
        origins = tuple(dict.fromkeys(f["origin"] for f in finalists if f["origin"]))
        scored = names + tuple(o for o in origins if o not in names)
        draws = len(TEST_DATA_SEEDS)
        fresh = self.evaluator.combos(fresh=True, seeds=cfg.fresh_seeds)
        main = [fresh[i:i + draws] for i in range(0, len(fresh), draws)]
        protocol = fresh[0].protocol
        holdouts = [[fc.combo(*parse_holdout(h), d, protocol, self.evaluator.cache, self.on_event)
                     for d in TEST_DATA_SEEDS] for h in cfg.holdouts if parse_holdout(h)[0] != LM_TASK]
        label = {n: f"{n} ({cfg.report_baselines})" for n in scored}
        tables, best = [], None
        for k, combos in enumerate(main + holdouts):
            if k == len(main):  # held out: the finalists against the best baseline and their zoo origins only
                best = best_baseline([label[n] for n in names], tables)
                scored = tuple(dict.fromkeys([n for n in names if label[n] == best] + list(origins)))
            self.on_event(f"final report: {combos[0].name} (test data, {draws} draws), {len(settings)} finalists "
                          f"with their shuffled controls and {len(scored)} {cfg.report_baselines} baselines")
            base = baseline_settings(scored, cfg.report_baselines, combos[0].task.name, combos[0].variant.spec,
                                     fc.train, self.on_event)
            tables.append(score_over_draws(combos, settings, base, fc.train, batch=fc.batch, backend=fc.backend))
        for h in cfg.holdouts:
            task, variant = parse_holdout(h)
            if task == LM_TASK:
                self.on_event(f"final report: lm {variant} (test data), {len(settings)} finalists trained through TRL")
                tables.append(language_table(settings, names, cfg.report_baselines, variant, protocol,
                                             self.on_event))
        report = build_report(finalists, [label[n] for n in names], tables[:len(main)], tables[len(main):],
                              protocol.describe(TEST_DATA_SEEDS), cfg.report_baselines,
                              self.store.get_state(self.run_id, RACING_KEY),
                              data_seeds=TEST_DATA_SEEDS, units_per_seed=draws * len(protocol.train_seeds),
                              origins={o: label[o] for o in origins})
        with self.store.transaction():
            for f, row in zip(finalists, [r for r in report["rows"] if r["kind"] == "finalist"]):
                if "fresh" in row:
                    scores = [{"task": combos[0].task.name, "dataset": combos[0].variant.spec, "data_seed": d,
                               "seed": s, "reference_seed": r, "score": float(x)} for combos, t in zip(main, tables)
                              for (d, r, s), x in zip(t.units, t.unit_scores(f["label"]))]
                    self.store.set_fresh(f["id"], row["fresh"][0], row["fresh"][1], scores)
            self.store.put_state(self.run_id, REPORT_KEY, report)
        self.store.set_run_status(self.run_id, "finished")
        return report
