"""The Python front door: score your own losses on the suite exactly as every report does, run a
search, the baseline table, or export a loss as code (what the CLI's commands do).

    from discovery.api import loss, score

    mine = loss("-logsigmoid(beta*(logp_w - ref_w - logp_l + ref_l)) - 0.1*mlogp_w", constants={"beta": 0.5})
    table = score({"mine": mine, "dpo": "dpo"}, task="halfcheetah", variant="noisy:0.2")
    table.mean_ci("mine")                      # mean normalised score and its 95% CI over seed units
    table.paired("mine", "pi_ref")             # paired difference to pi_ref (the floor); "oracle" is the ceiling
    table.paired("mine", "mine [shuffled]")    # does it win by using the preferences?
    score({s.label: s for s in tuned_baselines("halfcheetah", "noisy:0.2")}, variant="noisy:0.2")

    export("dpo", "torch")                     # standalone PyTorch code of a loss
    search("runs/archive.db")                  # a default `discover run`, returning its final report

A loss is a zoo name, an expression in the objective language (parsed by the safe parser, never
evaluated as Python) or an ``Objective``. Scores use the suite's dataset, pi_ref, training budget and the
``FRESH`` protocol on the test dataset seed unless told otherwise; tuned zoo settings come from
``tuned_baselines``.
"""

from __future__ import annotations

from collections.abc import Mapping

from archive.store import ArchiveStore
from discovery.search import Search, SearchConfig
from evaluators.bench import PRESETS, BenchPreset, BenchResult, run_bench
from evaluators.protocol import FRESH, TEST_DATA_SEED, Combo, Protocol, ScoreTable, Setting, score_with_controls
from evaluators.suite import task_suite, tune, tuned_setting
from grammar.export import export as export_objective
from grammar.objective import Objective
from grammar.zoo import ZOO, baseline


def loss(spec: str | Objective, name: str = "loss", constants: Mapping[str, float] | None = None) -> Objective:
    """A zoo name, an expression of the objective language, or an ``Objective`` as it is."""
    if isinstance(spec, Objective):
        return spec
    if spec in ZOO:
        return baseline(spec)
    return Objective.free(name, spec, constants=constants)


def score(losses: Mapping[str, str | Objective | Setting], task: str = "halfcheetah", variant: str = "clean", *,
          lr: float | None = None, steps: int | None = None, protocol: Protocol = FRESH,
          data_seed: int = TEST_DATA_SEED, shuffled_control: bool = True, cache: str | None = None,
          on_event=None) -> ScoreTable:
    """Train every loss from the suite's pi_ref seeds and score it beside pi_ref and the oracle.

    ``lr``/``steps`` default to the task's suite training budget; a ``Setting`` (e.g. from
    ``tuned_baselines``) brings its own. With ``shuffled_control`` each loss
    is also trained on the label-shuffled dataset (row ``"<label> [shuffled]"``), paired unit by unit.
    """
    suite = task_suite(task)
    protocol.validate()
    settings = [Setting(label, spec.objective, spec.lr, spec.steps) if isinstance(spec, Setting) else
                Setting(label, loss(spec, label), lr or suite.train.lr, steps or suite.train.steps)
                for label, spec in losses.items()]
    combo = Combo(task, variant, data_seed, suite.dataset, protocol, suite.reference, cache, on_event)
    return score_with_controls(combo, settings if shuffled_control else [],
                               [] if shuffled_control else settings, suite.train)


def tuned_baselines(task: str = "halfcheetah", variant: str = "clean", cache: str | None = None) -> list[Setting]:
    """The reported zoo losses at their tuned settings for (task, variant): shipped, cached or tuned now."""
    return [tuned_setting(name, best) for name, best in tune(task, variant, cache=cache).items()]


def search(archive: str, cfg: SearchConfig | None = None, *, final_report: bool = True, cache: str | None = None,
           on_event=None) -> dict:
    """A search run (`discovery.search.Search`) in the SQLite ``archive``, then its final report.

    Returns ``{"run_id", "generations", "report"}`` (``report`` None without ``final_report``). What
    `discover run` does, without its terminal view.
    """
    with ArchiveStore(archive) as store, Search.start(store, cfg or SearchConfig(), cache=cache,
                                                      on_event=on_event) as run:
        generations = run.run()
        report = run.final_report() if final_report else None
        return {"run_id": run.run_id, "generations": generations, "report": report}


def bench(preset: str | BenchPreset = "quick", cache: str | None = None, on_event=None) -> BenchResult:
    """The baseline table of `discover bench`: zoo losses, default and tuned, with pi_ref and the oracle;
    ``preset`` is "quick", "full" or a `BenchPreset` of your own."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown bench preset {preset!r}; use one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    return run_bench(preset, cache, on_event)


def export(spec: str | Objective, fmt: str = "torch") -> str:
    """A loss as standalone code for your own trainer: ``torch``, ``jax``, ``latex`` or ``sympy``."""
    return export_objective(loss(spec), fmt)


def transfer(spec: str | Objective, variant: str = "clean", *, baselines: tuple[str, ...] | None = None,
             archive: str | None = None, preset: str = "full", workers: int | None = None, cache: str | None = None,
             on_event=None) -> dict:
    """The loss on the language suite (task ``lm``), trained through TRL's `DPOTrainer` beside pi_ref, the
    ceiling, the tuned reported losses and its own label-shuffled twin, paired (`discover transfer`).

    ``spec``: a zoo name, an expression, an ``Objective`` or, with ``archive``, a candidate id ("42" or "#42").
    Returns the report (rows with score, CI, paired differences, gold reward, win rate and KL; the best-of-N
    curve); `evaluators.language.transfer.markdown` / ``plot`` render it."""
    from evaluators.language.data import parse_lm_variant
    from evaluators.language.suite import LM_SUITE, REPORTED_LOSSES, TINY
    from evaluators.language.transfer import transfer as run_transfer

    if preset not in ("full", "tiny"):
        raise ValueError(f"unknown preset {preset!r}; use full or tiny")
    parse_lm_variant(variant)
    objective = resolve(spec, archive)
    label = objective.name if objective.name in ZOO and ZOO[objective.name].objective == objective else (
        f"#{str(spec).lstrip('#')}" if isinstance(spec, str) and str(spec).lstrip("#").isdigit() else objective.name)
    return run_transfer(objective, label, variant, LM_SUITE if preset == "full" else TINY,
                        baselines=REPORTED_LOSSES if baselines is None else tuple(baselines), cache=cache,
                        workers=workers, on_event=on_event)


def resolve(spec: str | Objective, archive: str | None = None) -> Objective:
    """A zoo name, an archive id ("42" / "#42", with ``archive``), an expression or an ``Objective``."""
    if isinstance(spec, str) and spec.lstrip("#").isdigit() and spec.lstrip("#"):
        import os

        if not archive or not os.path.exists(archive):
            raise ValueError(f"no archive at {archive}; pass --archive to look up id {spec}")
        with ArchiveStore(archive, readonly=True) as store:
            return store.candidate(int(spec.lstrip("#")))["objective"]
    return loss(spec, "custom_loss")
