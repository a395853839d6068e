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
app.add_typer(policies_app, name="policies")

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


def main():  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
