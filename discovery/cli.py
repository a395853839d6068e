"""The ``discover`` command line (typer + rich)."""

from __future__ import annotations

import os
import sys

import typer
from rich.table import Table

from discovery.ui import console, err_console, user_errors

app = typer.Typer(help="MPO Discover: discover preference-optimisation objectives.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
policies_app = typer.Typer(help="Behaviour policies of the diagnostic suite.", no_args_is_help=True)
datasets_app = typer.Typer(help="Preference datasets and the BC reference policy.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")
app.add_typer(datasets_app, name="datasets")

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
    from evaluators.behaviour import train_behaviour
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


TaskOpt = typer.Option("hopper", "--task", help="hopper, walker2d, halfcheetah or ant")
VariantOpt = typer.Option("noisy:0.2", "--variant",
                          help="clean, noisy:p, stoch:beta, mixed, equal:eps, skip:eps, myopic:gamma")
SeedOpt = typer.Option(0, "--seed")
PairsOpt = typer.Option(2048, "--pairs", help="number of preference pairs")
LengthOpt = typer.Option(50, "--segment-length", help="control steps per segment")
CacheOpt = typer.Option(None, "--cache-dir", help="dataset cache folder (default ~/.cache/mpo-discover/datasets)")


def _dataset(task, variant, seed, pairs, segment_length, cache_dir, rebuild=False):
    from evaluators.datasets import DatasetConfig, build
    from evaluators.tasks import get_task

    config = DatasetConfig(n_pairs=pairs, segment_length=segment_length)
    with console.status(f"preference dataset {task} {variant} seed {seed}"):
        return build(get_task(task), variant, seed, config, cache_dir, rebuild,
                     on_event=lambda msg: err_console.print(f"[yellow]{msg}[/yellow]"))


@datasets_app.command("build")
@user_errors
def datasets_build(task: str = TaskOpt, variant: str = VariantOpt, seed: int = SeedOpt, pairs: int = PairsOpt,
                   segment_length: int = LengthOpt, cache_dir: str = CacheOpt,
                   rebuild: bool = typer.Option(False, help="ignore the cache")):
    """Build (or fetch from cache) a preference dataset; prints its path and content hash."""
    ds = _dataset(task, variant, seed, pairs, segment_length, cache_dir, rebuild)
    console.print(f"{ds.n_pairs} pairs  sha256 {ds.content_hash}\n{ds.path}", highlight=False)


@datasets_app.command("show")
@user_errors
def datasets_show(task: str = TaskOpt, variant: str = VariantOpt, seed: int = SeedOpt, pairs: int = PairsOpt,
                  segment_length: int = LengthOpt, cache_dir: str = CacheOpt,
                  plot: str = typer.Option(None, help="histogram PNG path (default: next to the dataset)"),
                  reference: bool = typer.Option(False, help="also train/load pi_ref and score it")):
    """Statistics of a dataset and a PNG histogram of chosen/rejected returns."""
    from evaluators.datasets import plot_returns, statistics

    ds = _dataset(task, variant, seed, pairs, segment_length, cache_dir)
    stats = statistics(ds)
    table = Table(title=f"{task} {ds.variant} seed {seed}", show_header=False)
    table.add_row("pairs", str(stats["pairs"]))
    table.add_row("segment length", str(stats["segment_length"]))
    table.add_row("label agreement with true return order", f"{stats['label_agreement']:.3f}")
    table.add_row("soft (0.5) labels", str(stats["soft_labels"]))
    for side in ("chosen", "rejected"):
        table.add_row(f"{side} return", f"{stats[side + '_return_mean']:.1f} ± {stats[side + '_return_std']:.1f}")
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
                       source: str = typer.Option("chosen", help="clone the chosen segments or both sides"),
                       episodes: int = typer.Option(10, min=1)):
    """Behaviour-clone pi_ref on a dataset (cached) and report its normalised score."""
    ds = _dataset(task, variant, seed, pairs, segment_length, cache_dir)
    console.print(f"pi_ref ({source}) on {task} {ds.variant}: normalised score {_reference_score(ds, source, episodes)}")


def _reference_score(ds, source="chosen", episodes=10) -> str:
    from evaluators.policy import stack
    from evaluators.reference import BCConfig, reference_policy
    from evaluators.scoring import score
    from evaluators.tasks import get_task

    with console.status("behaviour cloning pi_ref"):
        params = reference_policy(ds, BCConfig(source=source))
        s = score(get_task(ds.task), stack([params]), episodes=episodes, seed=10_000)
    return f"{s.mean[0]:.1f} ± {s.ci95[0]:.1f} (95% CI, {episodes} episodes)"


@app.command("bench")
@user_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="small preset: hopper clean + noisy:0.2, a few minutes on 2 CPUs"),
    task: list[str] = typer.Option(None, "--task", help="override the preset's tasks (repeatable)"),
    variant: list[str] = typer.Option(None, "--variant", help="override the preset's variants (repeatable)"),
    objective: list[str] = typer.Option(None, "--objective", help="zoo objectives to run (default: all)"),
    seeds: int = typer.Option(None, min=2, help="training seeds (default 5)"),
    episodes: int = typer.Option(None, min=1, help="evaluation episodes per trained policy"),
    steps: int = typer.Option(None, min=1, help="PO training steps"),
    pairs: int = typer.Option(None, min=1, help="preference pairs per dataset"),
    out: str = typer.Option("bench-results", help="folder for bench.md, bench.csv, bench.json"),
):
    """Baseline table: zoo objectives x dataset variants x tasks, normalised scores with 95% CIs."""
    from evaluators.bench import PRESETS, format_cell, objective_names, columns, run_bench, with_overrides, write_reports
    from evaluators.datasets import parse_variant
    from evaluators.tasks import get_task
    from grammar.zoo import ZOO

    preset = with_overrides(PRESETS["quick" if quick else "full"], task, variant, seeds, episodes, steps, pairs)
    for t in preset.tasks:
        get_task(t)
    for v in preset.variants:
        parse_variant(v)
    unknown = [o for o in objective or [] if o not in ZOO]
    if unknown:
        from evaluators.errors import SuiteError

        raise SuiteError(f"unknown objective(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    objectives = {name: ZOO[name].objective for name in (objective or ZOO)}
    with console.status("bench") as status:
        result = run_bench(objectives, preset, on_progress=lambda msg: status.update(f"bench: {msg}"))
    cols = columns(result)
    table = Table(title=f"normalised score, mean ± 95% CI over {preset.seeds} seeds ({result.seconds:.0f} s)")
    table.add_column("objective")
    for t, v in cols:
        table.add_column(f"{t}\n{v}", justify="right")
    for name in objective_names(result):
        table.add_row(name, *(format_cell(result.cell(t, v, name)) for t, v in cols),
                      style="dim" if name == "pi_ref" else None)
    console.print(table)
    paths = write_reports(result, out)
    console.print("wrote " + ", ".join(paths.values()), highlight=False)


DEFAULT_ARCHIVE = os.path.join("runs", "archive.db")


@app.command("run")
@user_errors
def run(
    task: list[str] = typer.Option(None, help="task(s) of the fitness (repeatable; default hopper)"),
    dataset: list[str] = typer.Option(None, help="dataset variant(s) of the fitness (repeatable; default noisy:0.2)"),
    seeds: int = typer.Option(2, min=1, help="training seeds per fitness evaluation"),
    episodes: int = typer.Option(2, min=1, help="evaluation episodes per trained policy"),
    steps: int = typer.Option(100, min=1, help="PO training steps per candidate"),
    pairs: int = typer.Option(1024, min=16, help="preference pairs per dataset"),
    segment_length: int = typer.Option(50, min=2, help="steps per preference segment"),
    reference_steps: int = typer.Option(3000, min=1, help="behaviour-cloning steps of the reference policy"),
    batch: int = typer.Option(8, min=1, help="candidates trained per population call (GP/LLM generations)"),
    backend: str = typer.Option("native", help="rollout backend for scoring: native (CPU MuJoCo) or mjx"),
    budget_evals: int = typer.Option(48, min=0, help="stop after this many candidates trained (0: no limit)"),
    budget_minutes: float = typer.Option(3.0, min=0, help="stop after this many minutes of search (0: no limit)"),
    gp: float = typer.Option(0.7, min=0, help="scheduler weight of genetic programming"),
    es: float = typer.Option(0.3, min=0, help="scheduler weight of the evolution strategy on constants"),
    llm: float = typer.Option(0.0, min=0, help="scheduler weight of the LLM proposer (needs an endpoint)"),
    llm_provider: str = typer.Option("openai", help="openai, anthropic or openai-compatible"),
    llm_model: str = typer.Option(None, help="model name (default: the provider's default)"),
    llm_base_url: str = typer.Option(None, help="base URL of an OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama)"),
    llm_max_calls: int = typer.Option(50, min=1, help="LLM call budget of the run"),
    llm_replay: int = typer.Option(None, help="answer LLM calls from the exchanges stored by this run id (no API)"),
    es_strategy: str = typer.Option("cma", help="evosax strategy: cma, openes or snes"),
    descriptors: str = typer.Option("complexity,saturation",
                                    help="QD grid axes: name or name=low:high:bins, comma-separated"),
    baseline: list[str] = typer.Option(None, help="zoo objectives of generation 0 (repeatable; default all)"),
    top_k: int = typer.Option(3, min=1, help="elites re-evaluated on fresh seeds at the end"),
    fresh_seeds: int = typer.Option(5, min=2, help="training seeds of the fresh-seed re-evaluation"),
    seed: int = typer.Option(0, help="seed of the whole search"),
    archive: str = typer.Option(DEFAULT_ARCHIVE, help="SQLite archive file"),
    resume: bool = typer.Option(False, "--resume", help="continue the archive's latest (or --run) run"),
    run_id: int = typer.Option(None, "--run", help="run to resume (default: the latest)"),
):
    """Search for PO objectives: GP + ES (+ LLM) into a quality-diversity archive, with a live view.

    Ctrl-C stops cleanly (the generation in flight is dropped); `--resume` continues the same run.
    """
    from dataclasses import replace

    from rich.live import Live

    from archive.store import ArchiveStore
    from discovery.es import ESConfig
    from discovery.live import fresh_table, live_view
    from discovery.llm import LLMConfig
    from discovery.search import Search, SearchConfig
    from evaluators.datasets import DatasetConfig
    from evaluators.fitness import FitnessConfig
    from evaluators.po_trainer import TrainConfig
    from evaluators.reference import BCConfig

    max_evals, max_seconds = budget_evals or None, budget_minutes * 60 or None
    store = ArchiveStore(archive)
    status = ["preparing"]
    replay = store.exchanges(llm_replay) if llm_replay is not None else None

    def on_event(msg: str):
        status[0] = msg

    if resume:
        search = Search.resume(store, run_id, max_evaluations=max_evals, max_seconds=max_seconds, on_event=on_event,
                               llm_replay=replay)
        console.print(f"resuming run #{search.run_id} at generation {search.generation} "
                      f"({search.evaluations()} evaluations so far)")
    else:
        llm_cfg = LLMConfig(provider=llm_provider, base_url=llm_base_url, max_calls=llm_max_calls)
        if llm_model:
            llm_cfg = replace(llm_cfg, model=llm_model)
        fitness = FitnessConfig(tasks=tuple(task or ("hopper",)), datasets=tuple(dataset or ("noisy:0.2",)),
                                seeds=seeds, episodes=episodes,
                                dataset=DatasetConfig(n_pairs=pairs, segment_length=segment_length),
                                train=TrainConfig(steps=steps), reference=BCConfig(steps=reference_steps),
                                backend=backend, batch=batch)
        cfg = SearchConfig(fitness=fitness, seed=seed, max_evaluations=max_evals, max_seconds=max_seconds,
                           weights={"gp": gp, "es": es, "llm": llm}, es=ESConfig(strategy=es_strategy),
                           llm=llm_cfg, descriptors=descriptors, baselines=tuple(baseline or ()), top_k=top_k,
                           fresh_seeds=fresh_seeds)
        search = Search.start(store, cfg, on_event=on_event, llm_replay=replay)
        console.print(f"run #{search.run_id} in {archive}")
    if search.llm_note:
        console.print(f"[yellow]{search.llm_note}[/yellow]")
    history = []
    with Live(live_view(search, history, status[0]), console=console, refresh_per_second=2, transient=False) as live:
        def refresh(msg: str | None = None):
            if msg:
                status[0] = msg
            live.update(live_view(search, history, status[0]))

        search.on_event = search.evaluator.on_event = refresh
        try:
            search.run(on_generation=lambda g: (history.append(g), refresh(f"generation {g.index} committed")))
        except KeyboardInterrupt:
            live.stop()
            console.print(f"[yellow]interrupted[/yellow]: generations up to {search.generation - 1} are committed; "
                          f"continue with `discover run --resume --archive {archive}`")
            raise typer.Exit(130)
        refresh("re-evaluating the best on fresh seeds")
        rows = search.fresh_evaluation()
    console.print(fresh_table(rows, search.cfg.fresh_seeds))
    _write_run_plots(search, os.path.join(os.path.dirname(archive) or ".", "plots"))


def _write_run_plots(search, folder: str) -> None:
    from archive.plots import plot_fitness_over_time, plot_heatmap

    os.makedirs(folder, exist_ok=True)
    heat = os.path.join(folder, f"run{search.run_id}-map.png")
    curve = os.path.join(folder, f"run{search.run_id}-fitness.png")
    plot_heatmap(search.qd, heat)
    best_baseline = search.best_baseline()
    plot_fitness_over_time(search.store.candidates(search.run_id, with_objective=False), curve,
                           baseline=best_baseline[1] if best_baseline else None)
    console.print(f"wrote {heat}, {curve}", highlight=False)


@app.command("export")
@user_errors
def export(
    target: str = typer.Argument(..., help="a zoo name (dpo), an archive id (42 or #42), or a loss expression"),
    format: str = typer.Option("torch", "--format", "-f", help="torch, jax, latex or sympy"),
    archive: str = typer.Option(DEFAULT_ARCHIVE, help="SQLite archive (for ids)"),
    out: str = typer.Option(None, "--out", "-o", help="write to this file instead of printing"),
):
    """Export an objective as standalone PyTorch / JAX code, LaTeX or sympy."""
    from grammar.export import export as export_objective

    text = export_objective(_resolve_objective(target, archive), format)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, out)
        console.print(f"wrote {out}", highlight=False)
    else:
        print(text)


def _resolve_objective(target: str, archive: str):
    from grammar.objective import Objective
    from grammar.zoo import ZOO

    if target in ZOO:
        return ZOO[target].objective
    if target.lstrip("#").isdigit():
        from archive.store import ArchiveStore

        if not os.path.exists(archive):
            raise ValueError(f"no archive at {archive}; pass --archive")
        with ArchiveStore(archive) as store:
            return store.candidate(int(target.lstrip("#")))["objective"]
    return Objective.free("custom_loss", target)


from discovery.cli_archive import archive_app  # noqa: E402

app.add_typer(archive_app, name="archive")


def main():  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
