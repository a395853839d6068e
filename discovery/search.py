"""The search loop: proposers -> validity -> population training -> SQLite archive, one generation at a time.

A run is a sequence of generations. Generation 0 evaluates the baseline zoo (the seeds of GP and the
yardstick of every report). Each later generation is produced by ONE proposer, drawn by the scheduler
from the configured weights with a generator seeded by (run seed, generation):

* ``gp``  children of quality-diversity elites (tournament among them) by `discovery.gp.vary`;
* ``es``  one evolution-strategy step over the constants of a promising structure (`discovery.es`), the
          whole ES population trained in one population call;
* ``llm`` objectives proposed by a language model from the archive's elites (`discovery.llm`); when the
          endpoint fails or every proposal is rejected, the generation is filled by GP instead.

Everything a generation produces (candidates, rejections, ES state, counters) is written in ONE
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
import subprocess
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from archive.descriptors import DescriptorError, describe, parse_descriptor_specs
from archive.qd import HallOfFame, QDArchive
from archive.rejections import group_rejections
from archive.store import ArchiveStore, dedupe_key
from discovery.es import STRATEGIES, ConstantSearch, ESConfig
from discovery.gp import GPConfig, tournament, vary
from discovery.llm import LLMConfig, LLMProposer, llm_available
from discovery.llm_prompt import PromptContext
from evaluators.fitness import Evaluation, FitnessConfig, FitnessEvaluator
from grammar.canonical import complexity
from grammar.objective import Objective
from grammar.validity import check
from grammar.zoo import ZOO

PROPOSERS = ("gp", "es", "llm")
ZOO_ORIGIN = "zoo"
MAX_GP_ATTEMPTS = 6  # x batch: proposals tried per GP generation before giving up on a full batch
FEEDBACK_WINDOW = 50  # latest rejections per proposer that the LLM's feedback is grouped from
FEEDBACK_KINDS = 3  # kinds of rejection fed back per proposer
CHANGES_KEY = "config_changes"  # state: the settings changed on resume

# The `discover run` option of each setting (dotted path into `SearchConfig.to_dict()`): errors name it,
# and a resumed run checks explicit options against the stored values.
OPTIONS: Mapping[str, str] = {
    "fitness.tasks": "--task", "fitness.datasets": "--dataset", "fitness.seeds": "--seeds",
    "fitness.episodes": "--episodes", "fitness.train.steps": "--steps", "fitness.dataset.n_pairs": "--pairs",
    "fitness.dataset.segment_length": "--segment-length", "fitness.reference.steps": "--reference-steps",
    "fitness.batch": "--batch", "fitness.backend": "--backend", "max_evaluations": "--budget-evals",
    "max_seconds": "--budget-minutes", "weights.gp": "--gp", "weights.es": "--es", "weights.llm": "--llm",
    "llm.provider": "--llm-provider", "llm.model": "--llm-model", "llm.base_url": "--llm-base-url",
    "llm.max_calls": "--llm-max-calls", "llm.timeout_s": "--llm-timeout", "es.strategy": "--es-strategy",
    "descriptors": "--descriptors", "baselines": "--baseline", "top_k": "--top-k", "fresh_seeds": "--fresh-seeds",
    "seed": "--seed",
}
RESUMABLE = ("max_evaluations", "max_seconds", "llm.max_calls", "llm.timeout_s")  # may change on resume
_FITNESS_OPTIONS = {"tasks": "--task", "datasets": "--dataset", "dataset": "--pairs/--segment-length",
                    "reference": "--reference-steps", "backend": "--backend", "seeds": "--seeds",
                    "episodes": "--episodes", "batch": "--batch"}  # FitnessConfig field -> option


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
    max_seconds: float | None = 240.0  # wall-clock of the search phase, summed over resumes
    weights: Mapping[str, float] = field(default_factory=lambda: {"gp": 0.7, "es": 0.3, "llm": 0.0})
    gp: GPConfig = GPConfig()
    es: ESConfig = ESConfig()
    llm: LLMConfig = LLMConfig()
    descriptors: str = "complexity,saturation"  # QD grid axes, see archive.descriptors.parse_descriptor_specs
    tournament: int = 3
    baselines: tuple[str, ...] = ()  # zoo names evaluated in generation 0 (empty: the whole zoo)
    top_k: int = 3  # elites re-evaluated on fresh seeds at the end
    fresh_seeds: int = 5

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
        with _option("--descriptors"):
            parse_descriptor_specs(self.descriptors)
        unknown = [n for n in self.weights if n not in PROPOSERS]
        if unknown:
            raise ValueError(f"unknown proposer(s) {', '.join(unknown)}; choose from {', '.join(PROPOSERS)}")
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
    """Package version plus the git commit when running from a checkout."""
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
    return f"{v}+{commit}{'-dirty' if dirty else ''}" if commit else v


@dataclass
class Proposed:
    objective: Objective
    origin: str
    parents: list[int]
    from_llm: bool = False  # linked to the generation's LLM exchange


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

    def add(self, p: Proposed, reason: str, ev: Evaluation | None, descriptors: dict | None) -> None:
        if reason:
            self.rows.append((p, {"status": "rejected", "reason": reason}))
            return
        self.rows.append((p, {"status": "evaluated" if ev.fitness is not None else "failed", "reason": ev.failure,
                              "fitness": ev.fitness, "ci95": ev.ci95, "descriptors": descriptors,
                              "scores": ev.scores}))


@dataclass
class FreshRow:
    candidate_id: int
    name: str
    formula: str
    origin: str
    search_fitness: float | None
    fitness: float | None
    ci95: float | None
    failure: str = ""


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
        self.llm_note = ""
        self.llm = None
        if cfg.weights.get("llm", 0) > 0:
            given = llm_client is not None or llm_http_client is not None or llm_replay is not None
            ok, why = (True, "") if given else llm_available(cfg.llm)
            if ok:  # the validity check runs in screening, where a failure becomes a rejected candidate
                self.llm = LLMProposer(dataclasses.replace(cfg.llm, check_validity=False), client=llm_client,
                                       http_client=llm_http_client, replay=llm_replay)
                self.llm.restore_budget(store.exchanges(run_id))  # calls and tokens spent before a resume
            else:
                self.llm_note = f"LLM proposer off: {why}"
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
        """Release the run lock (and the LLM client); the store stays open."""
        if self.llm is not None:
            self.llm.close()
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
        return counts["evaluated"] + counts["failed"]

    def budget_left(self) -> bool:
        cfg = self.cfg
        if cfg.max_evaluations is not None and self.evaluations() >= cfg.max_evaluations:
            return False
        return cfg.max_seconds is None or self.generation == 0 or self.elapsed() < cfg.max_seconds

    def best_baseline(self) -> tuple[str, float] | None:
        """(name, fitness) of the fittest zoo objective of generation 0."""
        if not hasattr(self, "_best_baseline"):
            zoo = self.store.candidates(self.run_id, status="evaluated", origin_prefix=ZOO_ORIGIN,
                                        order_by="fitness", descending=True, limit=1)
            if not zoo:
                return None
            self._best_baseline = zoo[0]["objective"].name, zoo[0]["fitness"]
        return self._best_baseline

    def best(self) -> dict | None:
        """The fittest discovered (non-zoo) candidate."""
        for c in self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True):
            if c["origin"] != ZOO_ORIGIN:
                return c
        return None

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

    def step(self) -> Generation:
        """Propose, screen and train one generation, then write all of it in ONE transaction.

        Training happens outside the transaction, so the archive is never locked for long and readers
        (`discover archive list`) always see whole generations.
        """
        g = self.generation
        rng = np.random.default_rng([self.cfg.seed, g])
        proposer = ZOO_ORIGIN if g == 0 else self._choose_proposer(rng)
        self.on_event(f"generation {g}: {proposer}")
        pending = _Pending(Generation(g, proposer, 0, 0, []))
        if proposer == "es":
            self._es_generation(g, rng, pending)
        else:
            if proposer == ZOO_ORIGIN:
                proposals = [Proposed(ZOO[n].objective, ZOO_ORIGIN, []) for n in self.cfg.baselines or tuple(ZOO)]
            elif proposer == "llm":
                proposals = self._llm_proposals(g, pending)
                if not proposals:
                    pending.report.proposer = "gp"
                    pending.report.note += "; GP filled the generation"
            if pending.report.proposer == "gp":
                proposals = self._gp_proposals(g, rng)
            self._screen_and_train(proposals, pending)
        self._commit(g, pending)
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
                                               **fields)
                added.append((cid, p, fields))
                trained += fields["status"] != "rejected" and p.origin != ZOO_ORIGIN
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
                self.hall.add(cid, fields["fitness"], complexity(p.objective))

    def _choose_proposer(self, rng: np.random.Generator) -> str:
        weights = {k: w for k, w in self.cfg.weights.items() if w > 0}
        if "llm" in weights and (self.llm is None or self.llm.exhausted):
            del weights["llm"]
        left = self.evaluations_left()
        if "es" in weights and (left is not None and left < self.cfg.es.population  # ES trains a whole population
                                or self._es_root() is None and self._es_campaign() is None):
            del weights["es"]
        if not weights:
            return "gp"
        names = sorted(weights)
        p = np.array([weights[n] for n in names], float)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    # ------------------------------------------------------------------ proposers
    def _parents(self) -> list[dict]:
        ids = {e.candidate_id for e in self.qd.elites()} | {e.candidate_id for e in self.hall.front()}
        return [self.store.candidate(i) for i in sorted(ids)]

    def _gp_proposals(self, g: int, rng: np.random.Generator) -> list[Proposed]:
        pool = self._parents()
        if not pool:
            return []
        fitness = np.array([c["fitness"] for c in pool])
        out, keys, room = [], set(), self.room()
        for _ in range(MAX_GP_ATTEMPTS * self.cfg.fitness.batch):
            if len(out) >= room:
                break
            chosen = [pool[i] for i in tournament(fitness, self.cfg.tournament, 2, rng)]
            try:
                child, op, used = vary([c["objective"] for c in chosen], rng, self.cfg.gp, f"g{g}_{len(out)}")
            except ValueError:  # GrammarError: no operator produced a child in the language
                continue
            key = dedupe_key(child)
            if key in keys:
                continue
            keys.add(key)
            out.append(Proposed(child, f"gp:{op}", [chosen[i]["id"] for i in used]))
        return out

    def _llm_proposals(self, g: int, pending: _Pending) -> list[Proposed]:
        proposal = self.llm.propose(self._prompt_context())
        ex = pending.exchange = proposal.exchange
        if ex.answer is None:
            pending.report.note = f"LLM call failed: {ex.error}"
            return []
        out = [Proposed(c.objective.replace(name=f"g{g}_{i}"), f"llm:{ex.model}", [], from_llm=True)
               for i, c in enumerate(proposal.candidates[:self.room()])]
        pending.report.note = f"LLM: {len(out)} proposed, {len(proposal.rejections)} refused in the answer"
        return out

    def _prompt_context(self) -> PromptContext:
        evaluated = self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True)

        def entry(c):
            return {"name": c["objective"].name, "formula": c["objective"], "fitness": c["fitness"],
                    "ci": c["ci95"], "descriptors": c["descriptors"]}

        elites = [entry(c) for c in evaluated[:5]]
        top = {c["id"] for c in evaluated[:5]}
        cells = [self.store.candidate(e.candidate_id) for e in self.qd.elites() if e.candidate_id not in top]
        rng = np.random.default_rng([self.cfg.seed, self.generation, 1])
        inspirations = [entry(cells[i]) for i in rng.permutation(len(cells))[:5]]
        fc = self.cfg.fitness
        return PromptContext(task=",".join(fc.tasks), dataset=",".join(fc.datasets), elites=elites,
                             inspirations=inspirations, rejections=self._feedback(),
                             best_baseline=self.best_baseline(), n_wanted=self.cfg.llm.n_wanted,
                             max_complexity=self.cfg.gp.max_complexity)

    def _feedback(self) -> list[str]:
        """A few kinds of recent rejection per proposer, each with its count and latest example."""
        rows = self.store.rejections(self.run_id)
        lines = []
        for source in PROPOSERS:
            recent = [r for r in rows if r[0] == source][-FEEDBACK_WINDOW:]
            groups = [grp for grp in group_rejections(recent) if source == "llm" or grp.kind != "duplicate"]
            lines += [f"[{source}] {grp.kind}: {grp.count} of the last {len(recent)}; e.g. {grp.snippet} -> "
                      f"{grp.example}" for grp in groups[:FEEDBACK_KINDS]]
        return lines

    # ------------------------------------------------------------------ screening and training
    def _screen(self, objective: Objective, seen_now: dict) -> tuple[str, dict | None]:
        """('', descriptors) when the objective may be trained, else (reason, None)."""
        earlier = self.store.seen(self.run_id, objective)
        if earlier is not None:
            return f"duplicate of #{earlier}", None
        key = dedupe_key(objective)
        if key in seen_now:
            return f"duplicate of {seen_now[key]} in the same generation", None
        seen_now[key] = objective.name
        verdict = check(objective)
        if not verdict.ok:
            return verdict.reason, None
        try:
            return "", describe(objective, [s.name for s in self.specs])
        except DescriptorError as e:
            return f"descriptor: {e}", None

    def _screen_and_train(self, proposals: list[Proposed], pending: _Pending) -> None:
        screened, seen_now = [], {}
        for p in proposals:
            screened.append((p, *self._screen(p.objective, seen_now)))
        trainable = [p.objective for p, reason, _ in screened if not reason]
        results = iter(self.evaluator.evaluate(trainable) if trainable else [])
        for p, reason, descriptors in screened:
            pending.add(p, reason, None if reason else next(results), descriptors)

    # ------------------------------------------------------------------ evolution strategies
    def _es_campaign(self) -> dict | None:
        campaign = self.store.get_state(self.run_id, "es_campaign")
        return campaign if campaign and campaign["step"] < self.cfg.es.generations else None

    def _es_root(self) -> dict | None:
        """Best evaluated candidate with free constants whose structure ES has not tuned yet."""
        tuned = set(self.store.get_state(self.run_id, "es_tuned", []))
        for c in self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True,
                                       limit=50):
            if c["objective"].constants and c["structure_hash"] not in tuned:
                return c
        return None

    def _es_generation(self, g: int, rng: np.random.Generator, pending: _Pending) -> None:
        campaign = self._es_campaign()
        if campaign is None:
            root = self._es_root()
            campaign = {"root": root["id"], "step": 0}
            pending.state["es_tuned"] = self.store.get_state(self.run_id, "es_tuned", []) + [root["structure_hash"]]
        root = self.store.candidate(campaign["root"])
        es = ConstantSearch(root["objective"].replace(name=f"es{root['id']}"), self.cfg.es,
                            seed=int(rng.integers(2**31)))
        if campaign["step"] > 0:
            es.load_state_bytes(self.store.get_state(self.run_id, "es_state"))
        population = [o.replace(name=f"g{g}_{i}") for i, o in enumerate(es.ask(tag=f"g{g}_"))]
        # The whole population trains in one call (fixed shape); members that fail screening rank last.
        screened = []
        for o in population:
            verdict = check(o)
            reason, descriptors = verdict.reason if not verdict.ok else "", None
            if not reason:
                try:
                    descriptors = describe(o, [s.name for s in self.specs])
                except DescriptorError as e:
                    reason = f"descriptor: {e}"
            screened.append((reason, descriptors))
        evaluations = self.evaluator.evaluate(population)
        told = []
        for o, (reason, descriptors), ev in zip(population, screened, evaluations):
            pending.add(Proposed(o, f"es:{self.cfg.es.strategy}", [root["id"]]), reason, None if reason else ev,
                        descriptors)
            told.append(None if reason else ev.fitness)
        es.tell(told)
        pending.state["es_state"] = es.state_bytes()
        pending.state["es_campaign"] = {"root": campaign["root"], "step": campaign["step"] + 1}
        pending.report.note = f"ES on #{root['id']} step {campaign['step'] + 1}"

    # ------------------------------------------------------------------ the final report
    def fresh_evaluation(self, on_event: Callable[[str], None] | None = None) -> list[FreshRow]:
        """Top-k distinct elites and the zoo baselines re-trained on fresh seeds, scored on fresh episodes."""
        evaluated = self.store.candidates(self.run_id, status="evaluated", order_by="fitness", descending=True)
        elites, structures = [], set()
        for c in evaluated:
            if c["origin"] != ZOO_ORIGIN and c["structure_hash"] not in structures:
                elites.append(c)
                structures.add(c["structure_hash"])
            if len(elites) == self.cfg.top_k:
                break
        rows = elites + [c for c in evaluated if c["origin"] == ZOO_ORIGIN]
        pending = [c for c in rows if c["fresh_fitness"] is None]
        if pending:
            (on_event or self.on_event)(f"fresh seeds: re-evaluating {len(pending)} objectives")
            results = self.evaluator.evaluate([c["objective"] for c in pending], fresh=True, seeds=self.cfg.fresh_seeds)
            with self.store.transaction():
                for c, ev in zip(pending, results):
                    self.store.set_fresh(c["id"], ev.fitness, ev.ci95, ev.scores)
        self.store.set_run_status(self.run_id, "finished")
        out = []
        for c in rows:
            c = self.store.candidate(c["id"])
            out.append(FreshRow(c["id"], c["objective"].name, c["objective"].short_text(200), c["origin"], c["fitness"],
                                c["fresh_fitness"], c["fresh_ci95"]))
        return sorted(out, key=lambda r: -np.inf if r.fitness is None else -r.fitness)
