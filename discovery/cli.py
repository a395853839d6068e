"""The ``discover`` command line (typer + rich)."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="MPO Discover: discover preference-optimisation objectives.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
policies_app = typer.Typer(help="Behaviour policies of the diagnostic suite.", no_args_is_help=True)
datasets_app = typer.Typer(help="Preference datasets and the BC reference policy.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")
app.add_typer(datasets_app, name="datasets")

console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Turn the errors a user can cause into one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from evaluators.errors import SuiteError

        try:
            return fn(*args, **kwargs)
        except (SuiteError, OSError) as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


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

        manifest = train_behaviour(t, steps, seed, out, on_progress)
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
    objectives = {name: ZOO[name] for name in (objective or ZOO)}
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


def main():  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
