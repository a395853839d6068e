"""The language task ``lm``: the suite's configuration, the paired score table, tuning and the validity gates.

The protocol is the MuJoCo suite's (`evaluators.protocol`): replication units are (pi_ref seed, training
seed) pairs, every setting sees the same units and evaluation prompts (common random numbers), paired
differences carry Student-t 95% CIs, every loss has a label-shuffled twin trained on the same pairs, tuning
uses the validation data seed and the ``TUNING`` protocol, reports the test data seed and ``FRESH``.
Here a unit's pi_ref is its own SFT run and its pairs are sampled from it.

Runs go to worker processes (one torch thread each, as many as cores); a run depends only on its inputs,
never on which worker ran it or what ran beside it.

Gates (``check``), per variant, verdicts on clean:
1. informative labels: the chosen completion has the higher gold reward in >= 65% of pairs;
2. side channel: AUC of pi_ref's log-likelihood picking the gold-better completion (reported);
3. a learned pi_ref: held-out nats/word within 0.05 of the language's entropy rate on every seed;
4. room above pi_ref: best-of-N at the KL budget gains >= 1 gold unit, and the oracle (SFT on best-of-N)
   scores >= 50;
5. preferences win: a tuned zoo loss beats pi_ref and its shuffled twin by >= 10 points, CIs above 0;
6. distance is not the score: Spearman(score, KL) over the scored losses (reported);
7. the protocol (stated).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import product
import multiprocessing

import numpy as np

from evaluators.language.data import best_of_n_pairs, build_pairs, parse_lm_variant
from evaluators.language.generator import Language, LanguageConfig
from evaluators.language.model import ModelConfig, SFTConfig
from evaluators.language.training import LMTrain, RunResult
from evaluators.paths import cache_root
from evaluators.protocol import FRESH, SHUFFLED, TEST_DATA_SEED, TUNING, VALIDATION_DATA_SEED, Protocol, \
    ScoreTable, Setting
from grammar.export import export
from grammar.objective import Objective
from grammar.zoo import baseline

TASK = "lm"
ORACLE = "oracle"


@dataclass(frozen=True)
class LMSuite:
    language: LanguageConfig = LanguageConfig()
    model: ModelConfig = ModelConfig()
    sft: SFTConfig = SFTConfig(steps=800)
    n_pairs: int = 1000
    train: LMTrain = LMTrain()
    default_lr: float = 3e-4
    oracle_lr: float = 1e-3  # SFT on best-of-N: its own (untuned) learning rate
    # the tuning grid: learning rate x the loss's main constant (the first of these it has)
    grid_lr: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    grid_constant: tuple[tuple[str, tuple[float, ...]], ...] = (("beta", (0.03, 0.1, 0.3)), ("lam", (0.1, 1.0)))

    @property
    def tag(self) -> str:
        """What the data, pi_ref and training depend on (the grid is keyed apart, with the tuned settings)."""
        fields = {k: v for k, v in asdict(self).items() if not k.startswith("grid_")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def grid(self) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
        return self.grid_lr, dict(self.grid_constant)


LM_SUITE = LMSuite()
# What CI and the tests run: the same code paths in seconds
TINY = LMSuite(sft=SFTConfig(steps=60, batch=32, corpus=2000), n_pairs=48,
               train=LMTrain(batch=8, max_steps=6, eval_every=3, probe_prompts=16, eval_prompts=24, eval_samples=2,
                             bon_samples=8), grid_lr=(1e-3,), grid_constant=(("beta", (0.1,)), ("lam", (1.0,))))
REPORTED_LOSSES = ("sft", "dpo", "ipo", "orpo", "cpl")


# -- one run, in a worker ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    suite: LMSuite
    variant: str
    data_seed: int
    reference_seed: int
    train_seed: int
    eval_seed: int
    label: str
    source: str  # the exported torch module ("" for pi_ref's own evaluation)
    lr: float
    oracle: bool = False


def _init_worker():
    import datasets
    import torch
    import transformers

    torch.set_num_threads(1)
    # transformers 5 warns on every TRL run that `gradient_checkpointing` will be renamed
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


@lru_cache(maxsize=4)
def _language(cfg: LanguageConfig) -> Language:
    return Language(cfg)


@lru_cache(maxsize=8)
def _reference(suite: LMSuite, seed: int, cache: str | None):
    from evaluators.language.model import reference_model

    return reference_model(_language(suite.language), suite.model, suite.sft, seed, cache)


@lru_cache(maxsize=2)
def _tokenizer(cfg: LanguageConfig):
    from evaluators.language.model import build_tokenizer

    return build_tokenizer(_language(cfg))


@lru_cache(maxsize=8)
def _evaluation(suite: LMSuite, seed: int, eval_seed: int, cache: str | None):
    from evaluators.language.training import Evaluation

    return Evaluation(_language(suite.language), _reference(suite, seed, cache), suite.train, eval_seed)


@lru_cache(maxsize=16)
def _pairs(suite: LMSuite, variant: str, data_seed: int, seed: int, oracle: bool, cache: str | None):
    language = _language(suite.language)
    ref = _reference(suite, seed, cache)
    if oracle:
        return best_of_n_pairs(language, ref, suite.n_pairs, suite.train.budget_n, data_seed, seed)
    return build_pairs(language, ref, variant, suite.n_pairs, data_seed, seed)


def _loss_module(source: str, cache: str | None):
    from evaluators.language.trl_adapter import load_exported

    folder = os.path.join(cache or cache_root(), "lm", "losses")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(source.encode()).hexdigest()[:16] + ".py")
    if not os.path.exists(path):
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            f.write(source)
        os.replace(f.name, path)
    return load_exported(path)


def prepare_reference(suite: LMSuite, seed: int, cache: str | None) -> float:
    """Train (or load) pi_ref for ``seed``; returns its held-out nats per word (gate 3)."""
    from evaluators.language.model import sequence_stats

    _init_worker()
    language = _language(suite.language)
    ref = _reference(suite, seed, cache)
    rng = np.random.default_rng([seed, 43])
    c = language.cfg
    words = language.sample(rng, 512, c.prompt_length + c.completion_length)
    prompts, completions = words[:, :c.prompt_length], words[:, c.prompt_length:]
    return float(-sequence_stats(ref, ref, prompts, completions)["logp"].mean() / c.completion_length)


def run_job(job: Job, cache: str | None) -> dict:
    """Train and score one (setting, unit); pure in its inputs."""
    import torch

    from evaluators.language.training import train_and_score

    _init_worker()
    torch.manual_seed(job.train_seed)
    suite, language = job.suite, _language(job.suite.language)
    evaluation = _evaluation(suite, job.reference_seed, job.eval_seed, cache)
    pairs = _pairs(suite, job.variant, job.data_seed, job.reference_seed, job.oracle, cache)
    module = _loss_module(job.source, cache)
    result: RunResult = train_and_score(language, _reference(suite, job.reference_seed, cache),
                                        _tokenizer(suite.language), pairs.to_dataset(language), module.loss,
                                        dict(module.CONSTANTS), job.lr, suite.train, job.train_seed, evaluation)
    return {"label": job.label, "score": result.score, "at_budget": result.at_budget, "final": result.final,
            "path": result.path, "reached": result.reached, "failure": result.failure,
            "reward_ref": evaluation.reward_ref, "ceiling": evaluation.ceiling, "best_of": evaluation.best_of,
            "gold_agreement": pairs.gold_agreement()}


class _InProcess:
    """The pool's interface, run here (one worker: no process start-up, the same results)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future


def _pool(workers: int | None):
    n = workers or max(1, min(2, os.cpu_count() or 1))
    if n == 1:
        return _InProcess()
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


# -- the score table ---------------------------------------------------------------------------------

@dataclass
class LMScoreTable(ScoreTable):
    """A `ScoreTable` (rows = settings then pi_ref and the oracle; one "episode" per unit: the normalised
    reward at the KL budget) with each run's details: reward, win rate and KL at the budget and at the end."""

    details: dict = field(default_factory=dict)  # label -> per-unit result dicts

    def figure(self, label: str, key: str, where: str = "at_budget") -> float:
        return float(np.mean([d[where][key] for d in self.details[label]]))


def loss_source(objective: Objective) -> str:
    return export(objective, "torch")


def score_settings(settings: list[Setting], variant: str, data_seed: int, protocol: Protocol,
                   suite: LMSuite = LM_SUITE, shuffled_control: bool | tuple[str, ...] = True, oracle: bool = True,
                   cache: str | None = None, workers: int | None = None, on_event=None) -> LMScoreTable:
    """Every setting on every unit, with pi_ref and the oracle rows, paired; with ``shuffled_control`` (True:
    every setting; a tuple: the settings of those labels) also each one's label-shuffled twin."""
    protocol.validate()
    v = parse_lm_variant(variant)
    units = protocol.units
    jobs = []
    controlled = [s for s in settings if shuffled_control is True or (shuffled_control and s.label in shuffled_control)]
    twins = [replace(s, label=s.label + SHUFFLED) for s in controlled]
    for s, shuffled in [(s, False) for s in settings] + [(s, True) for s in twins]:
        spec = v.with_shuffled(shuffled or v.shuffled).spec
        jobs += [Job(suite, spec, data_seed, r, t, protocol.eval_seed, s.label, loss_source(s.objective), s.lr)
                 for r, t in units]
    if oracle:
        jobs += [Job(suite, v.unshuffled.spec, data_seed, r, t, protocol.eval_seed, ORACLE, loss_source(baseline("sft")),
                     suite.oracle_lr, oracle=True) for r, t in units]
    results: list[dict] = []
    with _pool(workers) as pool:
        for i, nats in enumerate(pool.map(prepare_reference, [suite] * len(protocol.reference_seeds),
                                          protocol.reference_seeds, [cache] * len(protocol.reference_seeds))):
            if on_event:
                on_event(f"lm pi_ref seed {protocol.reference_seeds[i]}: {nats:.3f} nats/word")
        futures = [pool.submit(run_job, job, cache) for job in jobs]
        for i, f in enumerate(futures):
            results.append(f.result())
            if on_event:
                r = results[-1]
                on_event(f"lm {v.spec}: run {i + 1}/{len(jobs)} {r['label']} score {r['score']:.1f} "
                         f"(KL {r['at_budget']['kl']:.2f}{', ' + r['failure'] if r['failure'] else ''})")
    labels = [s.label for s in settings] + [s.label for s in twins] + ([ORACLE] if oracle else [])
    details = {label: [r for r in results if r["label"] == label] for label in labels}
    first = details[labels[0]] if labels else [results[0]]
    details["pi_ref"] = [{"score": 0.0, "at_budget": {"gold": d["reward_ref"], "win": 0.5, "kl": 0.0},
                          "final": {"gold": d["reward_ref"], "win": 0.5, "kl": 0.0}, "failure": ""} for d in first]
    labels.append("pi_ref")
    scores = np.array([[[d["score"]] for d in details[label]] for label in labels])
    gold = np.array([[[d["at_budget"]["gold"]] for d in details[label]] for label in labels])
    failures = {label: next(d["failure"] for d in details[label] if d["failure"])
                for label in labels if any(d["failure"] for d in details[label])}
    return LMScoreTable(f"{TASK} {v.spec}", labels, units, scores, gold, np.full(scores.shape[:2], np.nan),
                        failures, details)


# -- tuning ------------------------------------------------------------------------------------------

def main_constant(objective: Objective, suite: LMSuite = LM_SUITE) -> str | None:
    return next((c for c in suite.grid[1] if c in objective.constants), None)


def grid(name: str, objective: Objective, suite: LMSuite = LM_SUITE) -> list[Setting]:
    lrs, constants = suite.grid
    constant = main_constant(objective, suite)
    settings = []
    for lr, value in product(lrs, constants[constant] if constant else (None,)):
        tuned = objective if value is None else objective.replace(constants={**objective.constants, constant: value})
        label = f"{name}|lr={lr:g}" + ("" if value is None else f"|{constant}={value:g}")
        settings.append(Setting(label, tuned, lr, 0))
    return settings


SHIPPED_TUNED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tuned")


def _tuned_path(variant: str, suite: LMSuite, name: str, cache: str | None) -> str:
    key = json.dumps({"suite": suite.tag, "variant": variant, "name": name, "grid": list(suite.grid),
                      "protocol": asdict(TUNING), "data_seed": VALIDATION_DATA_SEED, "format": 1},
                     sort_keys=True, default=list)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache or os.path.join(cache_root(), "tuned"), f"lm-{variant.replace(':', '_')}-{name}-{tag}.json")


def tune(variant: str, names: tuple[str, ...] = REPORTED_LOSSES, suite: LMSuite = LM_SUITE, cache: str | None = None,
         workers: int | None = None, on_event=None) -> dict[str, dict]:
    """Best setting per zoo loss on the validation data seed (reward at the KL budget, ``TUNING`` protocol),
    one file per loss under the cache's ``tuned/`` (or shipped in ``evaluators/tuned/``), tuned on demand."""
    spec = parse_lm_variant(variant).spec
    for n in names:
        baseline(n)
    best, todo = {}, []
    for n in names:
        path = _tuned_path(spec, suite, n, cache)
        stored = next((p for p in (path, os.path.join(SHIPPED_TUNED, os.path.basename(path))) if os.path.exists(p)), None)
        if stored:
            with open(stored) as f:
                best[n] = json.load(f)["best"]
        else:
            todo.append(n)
    if not todo:
        return best
    settings = [s for n in todo for s in grid(n, baseline(n), suite)]
    if on_event:
        on_event(f"tuning {len(todo)} losses on lm {spec}: {len(settings)} settings x {len(TUNING.units)} seeds")
    table = score_settings(settings, spec, VALIDATION_DATA_SEED, TUNING, suite, shuffled_control=False, oracle=False,
                           cache=cache, workers=workers, on_event=on_event)
    for n in todo:
        rows = [(table.mean_ci(s.label)[0], s) for s in settings if s.label.split("|")[0] == n
                and s.label not in table.failures]
        if not rows:
            continue
        score, s = max(rows, key=lambda r: r[0])
        best[n] = {"label": s.label, "lr": s.lr, "constants": dict(s.objective.constants), "validation_score": score}
        path = _tuned_path(spec, suite, n, cache)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"task": TASK, "variant": spec, "suite": suite.tag, "best": best[n],
                       "grid": {r.label: table.mean_ci(r.label)[0] for r in settings if r.label.split("|")[0] == n}},
                      f, indent=1)
        os.replace(path + ".tmp", path)
    return best


def tune_lr(label: str, objective: Objective, variant: str, suite: LMSuite = LM_SUITE, cache: str | None = None,
            workers: int | None = None, on_event=None) -> Setting:
    """A loss at its own constants with the learning rate of the suite's grid that scores best on the validation
    data seed (``TUNING``): how a find or an expression enters the language suite. Cached by the loss's code."""
    spec = parse_lm_variant(variant).spec
    source = loss_source(objective)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = _tuned_path(spec, suite, f"lr-{key}", cache)
    if os.path.exists(path):
        with open(path) as f:
            return Setting(label, objective, json.load(f)["best"]["lr"], 0)
    settings = [Setting(f"{label}|lr={lr:g}", objective, lr, 0) for lr in suite.grid_lr]
    if on_event:
        on_event(f"tuning the learning rate of {label} on lm {spec}: {len(settings)} settings x {len(TUNING.units)} seeds")
    table = score_settings(settings, spec, VALIDATION_DATA_SEED, TUNING, suite, shuffled_control=False, oracle=False,
                           cache=cache, workers=workers, on_event=on_event)
    ok = [s for s in settings if s.label not in table.failures] or settings
    chosen = max(ok, key=lambda s: table.mean_ci(s.label)[0])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"task": TASK, "variant": spec, "suite": suite.tag, "source": source,
                   "best": {"lr": chosen.lr, "validation_score": table.mean_ci(chosen.label)[0]},
                   "grid": {s.label: table.mean_ci(s.label)[0] for s in settings}}, f, indent=1)
    os.replace(path + ".tmp", path)
    return Setting(label, objective, chosen.lr, 0)


def tuned_setting(name: str, best: dict) -> Setting:
    return Setting(f"{name} (tuned)", baseline(name).replace(constants=best["constants"]), best["lr"], 0)


def tuned_baselines(variant: str, names: tuple[str, ...] = REPORTED_LOSSES, suite: LMSuite = LM_SUITE,
                    cache: str | None = None, workers: int | None = None, on_event=None) -> list[Setting]:
    best = tune(variant, names, suite, cache, workers, on_event)
    return [tuned_setting(n, best[n]) for n in names if n in best]


# -- gates and the report ----------------------------------------------------------------------------

THRESHOLDS = {"label_agreement": 0.65, "nats_gap": 0.05, "room": 1.0, "oracle": 50.0, "win": 10.0}


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def side_channel_auc(suite: LMSuite, variant: str, data_seed: int, seed: int, cache: str | None) -> float:
    """P(pi_ref's per-word log-likelihood is higher on the gold-better completion of a pair)."""
    from evaluators.language.model import sequence_stats

    pairs = _pairs(suite, variant, data_seed, seed, False, cache)
    ref = _reference(suite, seed, cache)
    lw = sequence_stats(ref, ref, pairs.prompts, pairs.chosen)["logp"]
    ll = sequence_stats(ref, ref, pairs.prompts, pairs.rejected)["logp"]
    better_w = pairs.gold_chosen > pairs.gold_rejected
    strict = pairs.gold_chosen != pairs.gold_rejected
    hi, lo = np.where(better_w, lw, ll)[strict], np.where(better_w, ll, lw)[strict]
    return float(np.mean(np.where(hi > lo, 1.0, np.where(hi == lo, 0.5, 0.0))))


def check_variant(variant: str, suite: LMSuite = LM_SUITE, protocol: Protocol = FRESH, cache: str | None = None,
                  workers: int | None = None, on_event=None):
    """Tune the reported losses, score them (default and tuned) on the test data seed, and every gate."""
    from evaluators.suite import Gate, VariantReport, _above

    v = parse_lm_variant(variant)
    best = tune(v.spec, REPORTED_LOSSES, suite, cache, workers, on_event)
    defaults = [Setting(n, baseline(n), suite.default_lr, 0) for n in REPORTED_LOSSES]
    tuned = [tuned_setting(n, best[n]) for n in REPORTED_LOSSES if n in best]
    table = score_settings(defaults + tuned, v.spec, TEST_DATA_SEED, protocol, suite, cache=cache, workers=workers,
                           on_event=on_event)
    rows = []
    for label in table.labels:
        row = table.row(label)
        row.update({k: table.figure(label, k) for k in ("gold", "win", "kl")})
        row["final_kl"] = table.figure(label, "kl", "final")
        if label != "pi_ref":
            row["minus_pi_ref"] = table.paired(label, "pi_ref")
            if label != ORACLE and not label.endswith(SHUFFLED):
                row["minus_shuffled"] = table.paired(label, label + SHUFFLED)
        rows.append(row)
    first = table.details[table.labels[0]]
    agreement = float(np.mean([d["gold_agreement"] for d in first]))
    nats = [prepare_reference(suite, s, cache) for s in protocol.reference_seeds]
    entropy = _language(suite.language).entropy_rate
    room = float(np.mean([d["ceiling"] - d["reward_ref"] for d in first]))
    oracle_mean = table.mean_ci(ORACLE)[0]
    winners = [s.label for s in tuned if _above(table.paired(s.label, "pi_ref"), THRESHOLDS["win"])
               and _above(table.paired(s.label, s.label + SHUFFLED), THRESHOLDS["win"])]
    scored = [s.label for s in defaults + tuned]
    rho = spearman([table.mean_ci(x)[0] for x in scored], [table.figure(x, "kl", "final") for x in scored])
    clean = v.name == "clean"
    auc = side_channel_auc(suite, v.unshuffled.spec, TEST_DATA_SEED, protocol.reference_seeds[0], cache)
    gates = [
        Gate("1 informative labels", agreement, f">= {THRESHOLDS['label_agreement']:.2f} (clean)",
             agreement >= THRESHOLDS["label_agreement"] if clean else None,
             "share of pairs whose chosen completion has the higher gold reward"),
        Gate("2 side channel (AUC)", auc, "reported; gate 5 decides", None,
             "pi_ref's log-likelihood picking the gold-better completion"),
        Gate("3 learned pi_ref (nats/word)", max(nats) - entropy, f"<= {THRESHOLDS['nats_gap']:g} above the entropy rate",
             bool(max(nats) - entropy <= THRESHOLDS["nats_gap"]),
             f"held-out {min(nats):.3f}-{max(nats):.3f} nats/word, entropy rate {entropy:.3f}"),
        Gate("4 room above pi_ref", room, f"best-of-{suite.train.budget_n} gain >= {THRESHOLDS['room']:g} and oracle >= "
             f"{THRESHOLDS['oracle']:g} (clean)",
             (room >= THRESHOLDS["room"] and oracle_mean >= THRESHOLDS["oracle"]) if clean else None,
             f"gold reward: pi_ref {np.mean([d['reward_ref'] for d in first]):.2f}, best-of-{suite.train.budget_n} "
             f"{np.mean([d['ceiling'] for d in first]):.2f}; oracle (SFT on best-of-{suite.train.budget_n}) "
             f"scores {oracle_mean:.1f}"),
        Gate("5 preferences win", float(len(winners)), f"a tuned loss >= +{THRESHOLDS['win']:g} over pi_ref and over "
             "its shuffled self, CIs above 0 (clean)", bool(winners) if clean else None, ", ".join(winners) or "no tuned loss"),
        Gate("6 score vs distance (Spearman)", rho, "reported: rank correlation of score and final KL", None,
             f"over the {len(scored)} scored settings"),
        Gate("7 protocol", None, "stated", None, describe(protocol, suite)),
    ]
    return VariantReport(TASK, v.spec, gates, {"gold_agreement": agreement}, rows, best, {})


def describe(protocol: Protocol, suite: LMSuite = LM_SUITE) -> str:
    t = suite.train
    return (f"{len(protocol.reference_seeds)} pi_ref seeds (own SFT and pairs each) x {len(protocol.train_seeds)} "
            f"training seeds; {suite.n_pairs} pairs, batch {t.batch}, <= {t.max_steps} TRL steps, stopped at the KL "
            f"budget {t.kl_budget:.3f} nats (best-of-{t.budget_n}); {t.eval_prompts} held-out prompts x "
            f"{t.eval_samples} samples; score 100 (reward@budget - pi_ref) / (best-of-{t.budget_n} - pi_ref); "
            f"paired Student-t 95% CI over units")

def report_markdown(reports, protocol: Protocol = FRESH, suite: LMSuite = LM_SUITE) -> str:
    """The language suite's check as Markdown: gates, then every scored policy with its paired differences."""
    from evaluators.suite import verdict

    fmt = lambda x: "-" if x is None or not np.isfinite(x) else f"{x:.2f}"  # noqa: E731
    pm = lambda p: "-" if p is None else f"{p[0]:+.1f} ± {p[1]:.1f}"  # noqa: E731
    lines = [f"Protocol: {describe(protocol, suite)}.", ""]
    for r in reports:
        lines += [f"### lm {r.variant}", "", "| gate | figure | threshold | verdict | detail |", "|---|---|---|---|---|"]
        lines += [f"| {g.name} | {fmt(g.figure)} | {g.threshold} | {verdict(g.passed)} | {g.detail} |" for g in r.gates]
        lines += ["", "| policy | score | gold @ budget | win rate | KL @ budget / end | − pi_ref | − shuffled |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {row['label']} | {row['mean']:.1f} ± {fmt(row['ci95'])} | {row['gold']:.2f} | {row['win']:.2f} | "
                  f"{row['kl']:.2f} / {row['final_kl']:.2f} | {pm(row.get('minus_pi_ref'))} | {pm(row.get('minus_shuffled'))} |"
                  for row in r.rows]
        lines.append("")
    return "\n".join(lines)
