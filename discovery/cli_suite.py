"""``discover suite``: the default suite and its validity report."""

from __future__ import annotations

import json
import os

import typer
from rich.markup import escape
from rich.table import Table

from discovery.ui import console, user_errors

suite_app = typer.Typer(help="The diagnostic suite: its tasks and datasets, and the validity report.",
                        no_args_is_help=True)


def gates_table(report) -> Table:
    """One variant report's gates: figure, threshold, verdict (green pass, red FAIL) and detail."""
    from evaluators.suite import verdict

    table = Table(title=f"{report.task} {report.variant}")
    for column in ("gate", "figure", "threshold", "verdict", "detail"):
        table.add_column(column)
    for g in report.gates:
        table.add_row(g.name, "-" if g.figure is None else f"{g.figure:.2f}", g.threshold, verdict(g.passed), g.detail,
                      style={True: "green", False: "red", None: None}[g.passed])
    return table


@suite_app.command("show")
@user_errors
def show():
    """The suite's tasks, their datasets, and why a task is left out of the default suite."""
    from dataclasses import asdict

    from evaluators.protocol import FRESH, TEST_DATA_SEEDS
    from evaluators.suite import DEFAULT_VARIANTS, SUITE

    table = Table(title="diagnostic suite")
    for column in ("task", "default", "dataset", "training", "left out because"):
        table.add_column(column)
    for name, s in SUITE.items():
        d = asdict(s.dataset)
        table.add_row(name, "no" if s.excluded else "yes",
                      f"{d['n_pairs']} pairs x {d['segment_length']} steps, levels {'/'.join(d['levels'])}"
                      + (f", return to go {d['return_to_go']}" if d["return_to_go"] else ""),
                      f"{s.train.steps} steps, lr {s.train.lr:g}", s.excluded or "")
    console.print(table)
    console.print(f"variants: {', '.join(DEFAULT_VARIANTS)} (each with its +shuffled control)\n"
                  f"protocol: {FRESH.describe(TEST_DATA_SEEDS)}")
    try:
        from evaluators.language.suite import describe
    except ImportError as e:  # the lm extra is not installed
        console.print(f"lm (the language suite): needs the lm extra ({e.name} is missing)", highlight=False)
        return
    console.print(f"lm (the language suite, `discover suite check --task lm`, `discover transfer`): variants clean, "
                  f"noisy:p, mixed; {describe(FRESH)}", highlight=False)


@suite_app.command("check")
@user_errors
def check(
    task: list[str] = typer.Option(None, "--task", help="task(s) to check (repeatable; default: the default suite); "
                                   "lm: the language suite (variants clean, noisy:0.2 by default)"),
    variant: list[str] = typer.Option(None, "--variant", help="variant(s) (repeatable; default clean, noisy:0.2, mixed)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    out: str = typer.Option("suite-check", "--out", help="folder for suite_check.md and suite_check.json"),
):
    """Validity report: every gate per task x variant with its figure, threshold and verdict."""
    from evaluators.datasets import parse_variant
    from evaluators.suite import (DEFAULT_TASKS, DEFAULT_VARIANTS, check as run_check, report_json,
                                  report_markdown, task_suite)

    if task and "lm" in task:
        if len(task) > 1:
            raise ValueError("--task lm: check the language suite on its own (its variants and gates differ)")
        from discovery.cli_language import check_lm

        return check_lm(tuple(variant or ()), out, as_json)
    tasks = tuple(task or DEFAULT_TASKS)
    variants = tuple(variant or DEFAULT_VARIANTS)
    for t in tasks:
        task_suite(t)
    for v in variants:
        if parse_variant(v).shuffled:
            raise ValueError(f"--variant {v}: the shuffled control is run beside every variant; give the variant alone")
    os.makedirs(out, exist_ok=True)

    def write(reports):  # after every task x variant, so a long check leaves what it has measured
        with open(os.path.join(out, "suite_check.json"), "w") as f:
            json.dump(report_json(reports), f, indent=1)
        with open(os.path.join(out, "suite_check.md"), "w") as f:
            f.write(report_markdown(reports) + "\n")

    if as_json:
        reports = run_check(tasks, variants, on_report=write)
    else:
        with console.status("suite check") as status:
            reports = run_check(tasks, variants, on_event=lambda msg: status.update(f"suite check: {msg}"),
                                on_report=write)
    data = report_json(reports)
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    for r in reports:
        console.print(gates_table(r))
        scores = Table(title=f"{r.task} {r.variant}: scores (normalised, test data draws, fresh seeds)")
        for column in ("policy", "score", "ranking acc.", "- pi_ref (paired)", "- shuffled (paired)"):
            scores.add_column(column, justify="right" if column != "policy" else "left")
        for row in r.rows:
            pm = lambda p: "-" if p is None else f"{p[0]:+.1f} ± {p[1]:.1f}"
            scores.add_row(escape(row["label"]), f"{row['mean']:.1f} ± {row['ci95']:.1f}",
                           "-" if row["ranking_accuracy"] != row["ranking_accuracy"] else f"{row['ranking_accuracy']:.2f}",
                           pm(row.get("minus_pi_ref")), pm(row.get("minus_shuffled")))
        console.print(scores)
    for t, info in data["tasks"].items():
        console.print(f"{t}: {'passes' if info['passes'] else 'FAILS'} the gates checked"
                      + (f"; left out of the default suite: {info['excluded_because']}" if info["excluded_because"] else ""))
    console.print(f"wrote {out}/suite_check.md and {out}/suite_check.json", highlight=False)
