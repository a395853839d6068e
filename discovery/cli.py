"""The ``discover`` command line (typer + rich)."""

from __future__ import annotations

import os
import sys

import typer
from rich.table import Table

from discovery.cli_suite import suite_app
from discovery.ui import OneLineErrors, console, err_console, user_errors

app = typer.Typer(help="MPO Discover: discover preference-optimisation objectives.", no_args_is_help=True,
                  cls=OneLineErrors, pretty_exceptions_enable=False, add_completion=False)
policies_app = typer.Typer(help="Behaviour policies of the diagnostic suite.", no_args_is_help=True)
datasets_app = typer.Typer(help="Preference datasets and the BC reference policy.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")
app.add_typer(datasets_app, name="datasets")
app.add_typer(suite_app, name="suite")

def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)


@policies_app.command("train")
@user_errors
def policies_train(
    task: str = typer.Option(..., help="hopper, walker2d, halfcheetah or ant"),
    steps: int = typer.Option(3_000_000, min=10_000, help="PPO environment steps"),
    seed: int = typer.Option(0),
    out: str = typer.Option(None, help="policy folder (default: the package's evaluators/policies)"),
    reselect: bool = typer.Option(False, help="re-select levels from the saved snapshots of an earlier run"),
):
    """Train behaviour policies with PPO and save the random/low/medium/expert levels + manifest."""
    from evaluators.behaviour_training import train_behaviour
    from evaluators.tasks import get_task

    t = get_task(task)
    best = [float("-inf")]
    with progress_bar() as progress:
        bar = progress.add_task(f"PPO {t.gym_id}", total=steps, status="")

        def on_progress(step, eval_return):
            if eval_return is not None:
                best[0] = max(best[0], eval_return)
                progress.update(bar, status=f"eval {eval_return:7.1f}  best {best[0]:7.1f}")
            progress.update(bar, completed=step)

        manifest = train_behaviour(t, steps, seed, out, on_progress, reselect)
    _print_manifest(manifest)


@policies_app.command("show")
@user_errors
def policies_show(task: str = typer.Option(None, help="one task (default: all)")):
    """Print each level's measured return and the normalisation references."""
    from evaluators.behaviour import load_manifest
    from evaluators.tasks import TASKS, get_task

    for t in [get_task(task)] if task else TASKS.values():
        try:
            _print_manifest(load_manifest(t))
        except Exception as e:  # one missing task should not hide the others
            err_console.print(f"[yellow]{t.name}:[/yellow] {e}")


def _print_manifest(m: dict) -> None:
    ref = m["reference"]
    table = Table(title=f"{m['gym_id']} behaviour policies  (R_random {ref['random_return']:.1f}, "
                        f"R_expert {ref['expert_return']:.1f})")
    for col in ("level", "train step", "return (stochastic)", "return (deterministic)", "episodes"):
        table.add_column(col, justify="right")
    for level, info in m["levels"].items():
        table.add_row(level, f"{info['train_step']:,}", f"{info['return_mean']:.1f} ± {info['return_std']:.1f}",
                      f"{info['deterministic_return_mean']:.1f} ± {info['deterministic_return_std']:.1f}",
                      str(info["episodes"]))
    console.print(table)


TaskOpt = typer.Option("halfcheetah", "--task", help="hopper, walker2d, halfcheetah or ant")
VariantOpt = typer.Option("clean", "--variant",
                          help="clean, noisy:p, stoch:beta, mixed, equal:eps, skip:eps, myopic:gamma; "
                               "append +shuffled for the label-shuffle control")
SeedOpt = typer.Option(0, "--seed", help="dataset seed (0 validation, 1 test)")
PairsOpt = typer.Option(None, "--pairs", min=1, help="number of preference pairs (default: the task's suite setting)")
LengthOpt = typer.Option(None, "--segment-length", min=1, max=1000,
                         help="control steps per segment (default: the task's suite setting)")
CacheOpt = typer.Option(None, "--cache-dir", help="dataset cache folder (default ~/.cache/mpo-discover/datasets)")


def _dataset_config(task, pairs, segment_length):
    """The task's suite dataset settings with the given overrides, checked before any work."""
    from dataclasses import replace

    from evaluators.suite import task_suite

    config = task_suite(task).dataset
    config = replace(config, **{k: v for k, v in (("n_pairs", pairs), ("segment_length", segment_length)) if v})
    config.validate()
    return config


def _dataset(task, variant, seed, config, cache_dir, rebuild=False):
    from evaluators.datasets import build
    from evaluators.tasks import get_task

    with console.status(f"preference dataset {task} {variant} seed {seed}"):
        return build(get_task(task), variant, seed, config, cache_dir, rebuild,
                     on_event=lambda msg: err_console.print(f"[yellow]{msg}[/yellow]"))


@datasets_app.command("build")
@user_errors
def datasets_build(task: str = TaskOpt, variant: str = VariantOpt, seed: int = SeedOpt, pairs: int = PairsOpt,
                   segment_length: int = LengthOpt, cache_dir: str = CacheOpt,
                   rebuild: bool = typer.Option(False, "--rebuild", help="ignore the cache")):
    """Build (or fetch from cache) a preference dataset; prints its path and content hash."""
    from evaluators.datasets import parse_variant

    config = _dataset_config(task, pairs, segment_length)
    parse_variant(variant)
    ds = _dataset(task, variant, seed, config, cache_dir, rebuild)
    console.print(f"{ds.n_pairs} pairs  sha256 {ds.content_hash}\n{ds.path}", highlight=False)


@datasets_app.command("show")
@user_errors
def datasets_show(task: str = TaskOpt, variant: str = VariantOpt, seed: int = SeedOpt, pairs: int = PairsOpt,
                  segment_length: int = LengthOpt, cache_dir: str = CacheOpt,
                  plot: str = typer.Option(None, help="histogram PNG path (default: next to the dataset)"),
                  reference: bool = typer.Option(False, "--reference", help="also train/load pi_ref and score it")):
    """Statistics of a dataset (how informative its labels are) and a PNG histogram of returns."""
    from evaluators.datasets import parse_variant, plot_returns, statistics
    from evaluators.suite import label_figures

    config = _dataset_config(task, pairs, segment_length)
    parse_variant(variant)
    ds = _dataset(task, variant, seed, config, cache_dir)
    stats, labels = statistics(ds), label_figures(ds)
    table = Table(title=f"{task} {ds.variant} seed {seed}", show_header=False)
    table.add_row("pairs", str(stats["pairs"]))
    table.add_row("segment length", f"{stats['segment_length']} (+ {stats['return_to_go']} steps of return to go)")
    table.add_row("label agreement with the teacher's return order", f"{stats['label_agreement']:.3f}")
    table.add_row("mean |dR| / mean return (teacher's returns)", f"{labels['relative_return_gap']:.3f}")
    table.add_row("better level chosen (pairs of different levels)", f"{labels['better_level_chosen']:.1%}")
    table.add_row("soft (0.5) labels", str(stats["soft_labels"]))
    for side in ("chosen", "rejected"):
        table.add_row(f"{side} segment return", f"{stats[side + '_return_mean']:.1f} ± {stats[side + '_return_std']:.1f}")
        table.add_row(f"{side} terminated early", f"{stats['terminated_' + side]:.1%}")
        table.add_row(f"{side} levels", ", ".join(f"{k} {v}" for k, v in stats[side + "_levels"].items()))
    table.add_row("content hash", stats["content_hash"][:16])
    if reference:
        table.add_row("pi_ref normalised score", _reference_score(ds))
    console.print(table)
    path = plot or ds.path.replace(".safetensors", ".png")
    console.print(f"histogram: {plot_returns(ds, path)}", highlight=False)


@datasets_app.command("reference")
@user_errors
def datasets_reference(task: str = TaskOpt, variant: str = VariantOpt, seed: int = SeedOpt, pairs: int = PairsOpt,
                       segment_length: int = LengthOpt, cache_dir: str = CacheOpt,
                       source: str = typer.Option("both", "--source",
                                                  help="both (pi_ref), chosen (SFT on y_w) or best (the oracle)"),
                       episodes: int = typer.Option(10, "--episodes", min=1)):
    """Behaviour-clone a policy on a dataset (cached) and report its normalised score."""
    from evaluators.datasets import parse_variant
    from evaluators.reference import SOURCES

    if source not in SOURCES:
        raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    config = _dataset_config(task, pairs, segment_length)
    parse_variant(variant)
    ds = _dataset(task, variant, seed, config, cache_dir)
    console.print(f"BC ({source}) on {task} {ds.variant}: normalised score {_reference_score(ds, source, episodes)}")


def _reference_score(ds, source="both", episodes=10) -> str:
    from evaluators.policy import stack
    from evaluators.protocol import FRESH
    from evaluators.reference import BCConfig, reference_policy
    from evaluators.scoring import score
    from evaluators.tasks import get_task

    with console.status("behaviour cloning"):
        params = reference_policy(ds, BCConfig(source=source))
        s = score(get_task(ds.task), stack([params]), episodes=episodes, seed=FRESH.eval_seed)
    return f"{s.mean[0]:.1f} ± {s.ci95[0]:.1f} (95% CI over {episodes} episodes)"


@app.command("bench")
@user_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="small preset: the reported losses on clean data, 3 pi_ref seeds"),
    task: list[str] = typer.Option(None, "--task", help="override the preset's tasks (repeatable)"),
    variant: list[str] = typer.Option(None, "--variant", help="override the preset's variants (repeatable)"),
    objective: list[str] = typer.Option(None, "--objective", help="zoo objectives to run (default: the preset's)"),
    tuned: bool = typer.Option(True, "--tuned/--no-tuned", help="also tune each objective on the validation seed"),
    out: str = typer.Option("bench-results", "--out", help="folder for bench.md, bench.csv, bench.json"),
):
    """Baseline table: zoo objectives (default and tuned) x variants x tasks, with pi_ref and the oracle."""
    from dataclasses import replace

    from discovery import api
    from evaluators.bench import PRESETS, columns, format_cell, row_names, write_reports
    from evaluators.datasets import parse_variant
    from evaluators.suite import task_suite
    from grammar.zoo import ZOO

    preset = PRESETS["quick" if quick else "full"]
    preset = replace(preset, tasks=tuple(task or preset.tasks), variants=tuple(variant or preset.variants),
                     objectives=tuple(objective) if objective else preset.objectives, tuned=tuned)
    for t in preset.tasks:
        task_suite(t)
    for v in preset.variants:
        parse_variant(v)
    unknown = [o for o in preset.objectives or () if o not in ZOO]
    if unknown:
        raise ValueError(f"--objective: unknown {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    with console.status("bench") as status:
        result = api.bench(preset, on_event=lambda msg: status.update(f"bench: {msg}"))
    cols = columns(result)
    table = Table(title=f"normalised score, mean ± 95% CI, test data seed ({result.seconds:.0f} s)")
    table.add_column("objective")
    for t, v in cols:
        table.add_column(f"{t}\n{v}", justify="right")
    for name in row_names(result):
        table.add_row(name, *(format_cell(result.cell(t, v, name)) for t, v in cols),
                      style="dim" if name in ("pi_ref", "oracle") else None)
    console.print(table)
    paths = write_reports(result, out)
    console.print("wrote " + ", ".join(paths.values()), highlight=False)


DEFAULT_ARCHIVE = os.path.join("runs", "archive.db")
LLM_OPTIONS = ("llm_provider", "llm_model", "llm_base_url", "llm_max_calls", "llm_timeout", "llm_replay")


@app.command("run")
@user_errors
def run(
    ctx: typer.Context,
    task: list[str] = typer.Option(None, help="task(s) of the fitness (repeatable; default halfcheetah)"),
    dataset: list[str] = typer.Option(None, help="dataset variant(s) of the fitness (repeatable; default noisy:0.2)"),
    seeds: int = typer.Option(2, min=1, help="training seeds per pi_ref seed of a fitness evaluation"),
    episodes: int = typer.Option(2, min=1, help="evaluation episodes per trained policy"),
    steps: int = typer.Option(300, min=1, help="PO training steps per candidate"),
    pairs: int = typer.Option(None, min=16, help="preference pairs per dataset (default: the task's suite setting)"),
    segment_length: int = typer.Option(None, min=2, max=1000,
                                       help="steps per preference segment (default: the task's suite setting)"),
    reference_steps: int = typer.Option(None, min=1, help="behaviour-cloning steps of pi_ref (default: the task's "
                                                           "suite setting)"),
    batch: int = typer.Option(8, min=1, help="candidates trained per population call (GP/LLM generations)"),
    backend: str = typer.Option("native", help="rollout backend for scoring: native (CPU MuJoCo) or mjx"),
    executor: str = typer.Option("local", help="where populations are evaluated: local (this process) or ray "
                                               "(chunks of --batch on Ray workers)"),
    ray_address: str = typer.Option(None, help="with --executor ray: the cluster to join, e.g. ray://head:10001 "
                                               "(default: start a local Ray on this machine's CPUs)"),
    budget_evals: int = typer.Option(48, min=0, help="stop after this many candidates trained (0: no limit)"),
    budget_minutes: float = typer.Option(1.5, min=0, help="stop after this many minutes of search (0: no limit)"),
    gp: float = typer.Option(0.7, min=0, help="scheduler weight of genetic programming"),
    es: float = typer.Option(0.3, min=0, help="scheduler weight of the evolution strategy on constants"),
    llm: float = typer.Option(0.0, min=0, help="scheduler weight of the LLM proposer (needs an endpoint)"),
    llm_provider: str = typer.Option("openai", help="openai, anthropic or openai-compatible"),
    llm_model: str = typer.Option(None, help="model name (default: the provider's default)"),
    llm_base_url: str = typer.Option(None, help="server root: http://host:8000/v1 for openai-compatible servers "
                                                "(vLLM, llama.cpp, Ollama); for anthropic without /v1"),
    llm_max_calls: int = typer.Option(50, min=1, help="LLM call budget of the run"),
    llm_timeout: float = typer.Option(60.0, min=0, help="wall-clock limit of one LLM call in seconds, retries "
                                                        "included"),
    llm_replay: int = typer.Option(None, help="answer LLM calls from the exchanges stored by this run id (no API)"),
    es_strategy: str = typer.Option("cma", help="evosax strategy: cma, openes or snes"),
    descriptors: str = typer.Option("complexity,saturation",
                                    help="QD grid axes: name or name=low:high:bins, comma-separated"),
    baseline: list[str] = typer.Option(None, help="zoo objectives of generation 0 (repeatable; default the "
                                                  "reported losses sft, dpo, ipo, orpo, cpl; 'all': the whole zoo)"),
    top_k: int = typer.Option(3, min=1, help="finalists of the final report (top elites of distinct behaviour)"),
    fresh_seeds: int = typer.Option(3, min=2, help="pi_ref seeds per test data draw of the final report (fresh seeds)"),
    max_seeds: int = typer.Option(4, min=1, help="racing cap: training seeds a promising candidate may get "
                                                 "(rungs double from --seeds)"),
    first_rung_steps: int = typer.Option(0, min=0, help="multi-fidelity racing: screen every candidate with this "
                                                        "many PO steps first; only the best third is trained with "
                                                        "--steps (0: off)"),
    allow_non_monotone: bool = typer.Option(False, "--allow-non-monotone",
                                            help="also search losses that are not monotone in the preferences"),
    holdout: list[str] = typer.Option(None, help="TASK:VARIANT scored only in the final report, in its own "
                                                 "column (repeatable; e.g. hopper:noisy:0.2, or lm:clean for "
                                                 "the language suite, trained through TRL)"),
    report_baselines: str = typer.Option("tuned", help="baselines of the final report: tuned (the suite's "
                                                       "tuned settings, tuned once per task x variant) or default"),
    seed: int = typer.Option(0, help="seed of the whole search"),
    archive: str = typer.Option(DEFAULT_ARCHIVE, help="SQLite archive file"),
    resume: bool = typer.Option(False, "--resume", help="continue the archive's latest (or --run) run with its "
                                                        "stored settings; only budgets may be given anew"),
    run_id: int = typer.Option(None, "--run", help="run to resume (with --resume; default: the latest)"),
):
    """Search for PO objectives: GP + ES (+ LLM) into a quality-diversity archive, with a live view.

    Every option is checked before anything is opened or built. Ctrl-C stops cleanly (the generation in
    flight is dropped); `--resume` continues the same run.
    """
    from archive.store import ArchiveStore
    from discovery.search import OPTIONS, Search

    given = {p.opts[0]: p.name for p in ctx.command.params
             if p.name in ctx.params and ctx.get_parameter_source(p.name).name != "DEFAULT"}
    if run_id is not None and not resume:
        raise ValueError("--run: picks the run to continue and needs --resume (without it a new run starts)")
    cfg = _search_config(task, dataset, seeds, episodes, steps, pairs, segment_length, reference_steps, batch,
                         backend, budget_evals, budget_minutes, gp, es, llm, llm_provider, llm_model, llm_base_url,
                         llm_max_calls, llm_timeout, es_strategy, descriptors, baseline, top_k, fresh_seeds, seed,
                         max_seeds, allow_non_monotone, holdout, report_baselines, executor, ray_address,
                         first_rung_steps)
    changes, replay = {}, None
    if resume:
        if not os.path.isfile(archive):
            raise ValueError(f"--resume: no archive at {archive}")
        with ArchiveStore(archive, readonly=True) as reader:
            stored_run = reader.run(run_id) if run_id is not None else reader.latest_run()
            if stored_run is None:
                raise ValueError(f"--resume: the archive {archive} holds no run yet")
            stored = Search.stored_config(reader, stored_run["id"])
        changes = _resume_changes(cfg, stored, given, stored_run["id"])
        cfg = stored.with_settings(changes)
    cfg.validate()
    _check_proposer_options(cfg, given, llm_replay is not None)
    if llm_replay is not None:
        replay = _stored_exchanges(archive, llm_replay)

    store = ArchiveStore(archive)
    try:
        if resume:
            search = Search.resume(store, stored_run["id"], changes=changes, llm_replay=replay)
            changed = "".join(f"; {OPTIONS[s]} {_shown(s, stored.get(s))} -> {_shown(s, v)}"
                              for s, v in changes.items())
            console.print(f"resuming run #{search.run_id} at generation {search.generation} "
                          f"({search.evaluations()} evaluations so far){changed}", highlight=False)
        else:
            search = Search.start(store, cfg, llm_replay=replay)
            console.print(f"run #{search.run_id} in {archive}", highlight=False)
        with search:
            _search(search, archive)
    finally:
        store.close()


def _search_config(task, dataset, seeds, episodes, steps, pairs, segment_length, reference_steps, batch, backend,
                   budget_evals, budget_minutes, gp, es, llm, llm_provider, llm_model, llm_base_url, llm_max_calls,
                   llm_timeout, es_strategy, descriptors, baseline, top_k, fresh_seeds, seed, max_seeds=4,
                   allow_non_monotone=False, holdout=None, report_baselines="tuned", executor="local",
                   ray_address=None, first_rung_steps=0):
    """The `SearchConfig` the options of `discover run` describe (not validated yet)."""
    from dataclasses import replace

    from discovery.es import ESConfig
    from discovery.llm import LLMConfig
    from discovery.search import SearchConfig
    from evaluators.datasets import DatasetConfig
    from evaluators.fitness import FitnessConfig
    from evaluators.reference import BCConfig
    from evaluators.suite import SUITE

    llm_cfg = LLMConfig(provider=llm_provider, base_url=llm_base_url, max_calls=llm_max_calls, timeout_s=llm_timeout)
    if llm_model:
        llm_cfg = replace(llm_cfg, model=llm_model)
    defaults = FitnessConfig()
    tasks = tuple(task or defaults.tasks)
    dataset_cfg = None
    if pairs or segment_length:  # overrides of the first task's suite dataset, for every task
        suite = SUITE.get(tasks[0])
        base = suite.dataset if suite else DatasetConfig()
        dataset_cfg = replace(base, **{k: v for k, v in (("n_pairs", pairs), ("segment_length", segment_length)) if v})
    fitness = FitnessConfig(tasks=tasks, datasets=tuple(dataset or defaults.datasets), seeds=seeds, episodes=episodes,
                            dataset=dataset_cfg, train=replace(defaults.train, steps=steps),
                            reference=None if reference_steps is None else
                            replace(SUITE[tasks[0]].reference if tasks[0] in SUITE else BCConfig(), steps=reference_steps),
                            backend=backend, batch=batch, executor=executor, ray_address=ray_address)
    return SearchConfig(fitness=fitness, seed=seed, max_evaluations=budget_evals or None,
                        max_seconds=budget_minutes * 60 or None, weights={"gp": gp, "es": es, "llm": llm},
                        es=ESConfig(strategy=es_strategy), llm=llm_cfg, descriptors=descriptors,
                        baselines=_baselines(baseline), top_k=top_k, fresh_seeds=fresh_seeds, max_seeds=max_seeds,
                        allow_non_monotone=allow_non_monotone, holdouts=tuple(holdout or ()),
                        report_baselines=report_baselines, first_rung_steps=first_rung_steps)


def _baselines(names: list[str] | None) -> tuple[str, ...]:
    """--baseline: none given, the reported losses; 'all', the whole zoo (an empty tuple); else the names."""
    from evaluators.suite import REPORTED_LOSSES

    if not names:
        return REPORTED_LOSSES
    return () if list(names) == ["all"] else tuple(names)


def _shown(setting: str, value) -> str:
    """A setting's value as a user wrote it."""
    if value is None:
        return "no limit" if setting in ("max_evaluations", "max_seconds") else "the default"
    if setting == "max_seconds":
        return f"{value / 60:g} min"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _resume_changes(cfg, stored, given: dict[str, str], run_id: int) -> dict:
    """The settings an explicit option changes on resume; an option that contradicts a stored setting that
    cannot change is an error naming both."""
    from discovery.search import OPTIONS, RESUMABLE

    changes = {}
    for setting, flag in OPTIONS.items():
        if flag not in given or cfg.get(setting) == stored.get(setting):
            continue
        if setting not in RESUMABLE:
            raise ValueError(f"{flag} {_shown(setting, cfg.get(setting))}: run #{run_id} was started with "
                             f"{_shown(setting, stored.get(setting))}, and a resumed run keeps its settings (only "
                             f"{', '.join(OPTIONS[r] for r in RESUMABLE)} may change); start a new run instead")
        changes[setting] = cfg.get(setting)
    return changes


def _check_proposer_options(cfg, given: dict[str, str], replaying: bool) -> None:
    """Options of a proposer whose weight is 0 would be ignored: an error. An explicit LLM weight needs an
    endpoint that can be used (a key), or a replay."""
    from discovery.llm import llm_available

    if cfg.weights.get("llm", 0) == 0:
        for flag, name in given.items():
            if name in LLM_OPTIONS:
                raise ValueError(f"{flag}: has no effect while the LLM weight is 0; add --llm WEIGHT")
    elif "--llm" in given and not replaying:
        ok, why = llm_available(cfg.llm)
        if not ok:
            raise ValueError(f"--llm {cfg.weights['llm']:g}: the LLM proposer cannot run: {why} "
                             f"(or answer from a stored run with --llm-replay RUN)")
    if cfg.weights.get("es", 0) == 0 and "--es-strategy" in given:
        raise ValueError("--es-strategy: has no effect while the ES weight is 0; add --es WEIGHT")


def _stored_exchanges(archive: str, run_id: int) -> list[dict]:
    from archive.store import ArchiveError, ArchiveStore

    if not os.path.isfile(archive):
        raise ValueError(f"--llm-replay {run_id}: no archive at {archive} to replay it from")
    with ArchiveStore(archive, readonly=True) as reader:
        try:
            reader.run(run_id)
        except ArchiveError:
            raise ValueError(f"--llm-replay {run_id}: the archive {archive} has no run {run_id}") from None
        return reader.exchanges(run_id)


def _search(search, archive: str) -> None:
    """Run the search with the live view (or one line per generation when output is not a terminal), then
    re-evaluate on fresh seeds, print the table and write the plots."""
    import time
    from contextlib import nullcontext

    from rich.live import Live

    from discovery.live import live_view, progress_line, report_table

    if search.llm_note:
        console.print(f"[yellow]{search.llm_note}[/yellow]", highlight=False)
    history, status = [], ["preparing"]
    live = Live(live_view(search, history, status[0]), console=console, refresh_per_second=2, transient=False) \
        if console.is_terminal else None

    start = time.monotonic()

    def refresh(msg: str | None = None):
        if msg:
            status[0] = msg
        if live is not None:
            live.update(live_view(search, history, status[0]))
        elif msg:  # plain lines when the output is not a terminal
            elapsed = int(time.monotonic() - start)
            console.print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {msg}", highlight=False, markup=False,
                          soft_wrap=True)

    def on_generation(g):
        history.append(g)
        refresh(f"generation {g.index} committed")
        if live is None:
            console.print(progress_line(search, g), highlight=False, markup=False, soft_wrap=True)

    search.on_event = search.evaluator.on_event = refresh
    try:
        with live or nullcontext():
            search.run(on_generation=on_generation)
            refresh("final report: finalists and baselines on the test data draws with fresh seeds")
            report = search.final_report()
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: generations up to {search.generation - 1} are committed; "
                      f"continue with `discover run --resume --archive {archive}`")
        raise typer.Exit(130)
    console.print(report_table(report))
    _write_run_plots(search, report, os.path.join(os.path.dirname(archive) or ".", "plots"))


def _write_run_plots(search, report: dict, folder: str) -> None:
    """The heat map, the fitness curve and the final report (Markdown and JSON), side by side."""
    import json

    from archive.plots import run_plots
    from discovery.report import markdown

    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"run{search.run_id}")
    run_plots(search.store, search.run_id, search.qd, folder)
    with open(stem + "-report.md", "w") as f:
        f.write(markdown(report))
    with open(stem + "-report.json", "w") as f:
        json.dump(report, f, indent=1)
    console.print(f"wrote {stem}-map.png, {stem}-fitness.png, {stem}-report.md, {stem}-report.json", highlight=False)


@app.command("export")
@user_errors
def export(
    target: str = typer.Argument(..., help="a zoo name (dpo), an archive id (42 or #42), or a loss expression"),
    format: str = typer.Option("torch", "--format", "-f", help="torch, jax, latex or sympy"),
    archive: str = typer.Option(DEFAULT_ARCHIVE, help="SQLite archive (for ids)"),
    out: str = typer.Option(None, "--out", "-o", help="write to this file instead of printing"),
):
    """Export an objective as standalone PyTorch / JAX code, LaTeX or sympy."""
    from grammar.export import export as export_objective  # what discovery.api.export calls (lighter import)

    if out is not None:
        _check_writable(out, "--out")
    text = export_objective(_resolve_objective(target, archive), format)
    if out is not None:
        _write_text(out, text if text.endswith("\n") else text + "\n", "--out")
        console.print(f"wrote {out}", highlight=False)
    else:
        print(text)


def _check_writable(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")


def _write_text(path: str, text: str, flag: str) -> None:
    """Write through a temporary file beside `path` and a rename: `path` is whole or untouched, and nothing
    else is left behind."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.isfile(tmp):
            os.unlink(tmp)
        raise ValueError(f"{flag} {path}: cannot write it ({e.strerror or e})") from None


def _resolve_objective(target: str, archive: str):
    from grammar.objective import Objective
    from grammar.zoo import ZOO

    if target in ZOO:
        return ZOO[target].objective
    if target.lstrip("#").isdigit():
        from archive.store import ArchiveStore

        if not os.path.exists(archive):
            raise ValueError(f"no archive at {archive}; pass --archive")
        with ArchiveStore(archive, readonly=True) as store:
            return store.candidate(int(target.lstrip("#")))["objective"]
    return Objective.free("custom_loss", target)


from discovery.cli_archive import archive_app  # noqa: E402
from discovery.cli_language import transfer  # noqa: E402

app.add_typer(archive_app, name="archive")
app.command("transfer")(transfer)


def main():  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
