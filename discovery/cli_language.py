"""The language suite at the terminal: ``discover transfer`` and ``discover suite check --task lm``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

import typer
from rich.markup import escape
from rich.table import Table

from discovery.ui import console, user_errors

DEFAULT_ARCHIVE = os.path.join("runs", "archive.db")
LM_DEFAULT_VARIANTS = ("clean", "noisy:0.2")


@contextlib.contextmanager
def progress(title: str):
    """``on_event`` for long work: a rich status line in a terminal, plain timestamped lines otherwise."""
    if console.is_terminal:
        with console.status(title) as status:
            yield lambda msg: status.update(f"{title}: {msg}")
    else:
        start = time.time()
        yield lambda msg: print(f"[{time.time() - start:6.0f}s] {title}: {msg}", flush=True)


def _pm(pair) -> str:
    return "-" if pair is None else f"{pair[0]:+.1f} ± {pair[1]:.1f}"


@user_errors
def transfer(
    target: str = typer.Argument(..., help="a zoo name (dpo), an archive id (42 or #42), or a loss expression"),
    variant: str = typer.Option("clean", help="language dataset variant: clean, noisy:p or mixed"),
    archive: str = typer.Option(DEFAULT_ARCHIVE, help="SQLite archive (for ids)"),
    preset: str = typer.Option("full", help="full (the suite) or tiny (seconds: checks the plumbing, not the loss)"),
    workers: int = typer.Option(None, min=1, help="worker processes (default: one per core, at most 2)"),
    out: str = typer.Option("transfer", "--out", help="folder for the report (Markdown, JSON) and the plot"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
):
    """The loss on the language suite (a tiny GPT-2 trained through TRL's DPOTrainer, a gold reward) beside
    pi_ref, the ceiling, the tuned reported losses and its own label-shuffled twin, paired."""
    from discovery.api import resolve, transfer as run_transfer
    from evaluators.language.data import parse_lm_variant
    from evaluators.language.transfer import markdown, plot

    try:
        v = parse_lm_variant(variant)
    except ValueError as e:
        raise ValueError(f"--variant {variant}: {e}") from None
    if v.shuffled:
        raise ValueError(f"--variant {variant}: the shuffled twin is trained beside the loss; give the variant alone")
    if preset not in ("full", "tiny"):
        raise ValueError(f"--preset {preset}: use full or tiny")
    resolve(target, archive)  # an unknown id or an expression outside the grammar fails here, before any work
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: is a file; give a folder")
    os.makedirs(out, exist_ok=True)
    with progress("transfer") as on_event:
        rep = run_transfer(target, v.spec, archive=archive, preset=preset, workers=workers, on_event=on_event)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{rep['loss'].removesuffix(' (tuned)').lstrip('#')}-{v.spec}")
    stem = os.path.join(out, f"transfer-{name}")
    with open(stem + ".md", "w") as f:
        f.write(markdown(rep))
    with open(stem + ".json", "w") as f:
        json.dump(rep, f, indent=1)
    plot(rep, stem + ".png")
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    table = Table(title=f"{rep['loss']} on lm {rep['variant']} (score: 0 = pi_ref, 100 = best-of-N at the KL budget)")
    for column in ("policy", "score", "gold @ budget", "win rate", "KL budget/end", "- pi_ref", "loss - this"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in rep["rows"]:
        table.add_row(escape(r["label"]), f"{r['score'][0]:.1f} ± {r['score'][1]:.1f}", f"{r['gold']:.2f}", f"{r['win']:.2f}",
                      f"{r['kl']:.2f}/{r['final_kl']:.2f}", _pm(r.get("minus_pi_ref")), _pm(r.get("loss_minus_this")),
                      style="bold" if r["kind"] == "loss" else None)
    console.print(table)
    console.print(f"protocol: {rep['protocol']}", highlight=False)
    console.print(f"wrote {stem}.md, {stem}.json, {stem}.png", highlight=False)


def check_lm(variants: tuple[str, ...], out: str, as_json: bool) -> None:
    """`discover suite check --task lm`: the language suite's gates per variant."""
    from evaluators.language.data import parse_lm_variant
    from evaluators.language.suite import check_variant, report_markdown

    variants = variants or LM_DEFAULT_VARIANTS
    for v in variants:
        if parse_lm_variant(v).shuffled:
            raise ValueError(f"--variant {v}: the shuffled control is run beside every variant; give the variant alone")
    os.makedirs(out, exist_ok=True)
    reports = []
    with progress("suite check lm") as on_event:
        for v in variants:
            reports.append(check_variant(v, on_event=on_event))
            data = {"task": "lm", "passes": all(g.passed is not False for r in reports for g in r.gates),
                    "reports": [r.to_json() for r in reports]}
            with open(os.path.join(out, "suite_check_lm.json"), "w") as f:
                json.dump(data, f, indent=1)
            with open(os.path.join(out, "suite_check_lm.md"), "w") as f:
                f.write(report_markdown(reports) + "\n")
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    from discovery.cli_suite import gates_table

    for r in reports:
        console.print(gates_table(r))
        scores = Table(title=f"lm {r.variant}: scores (0 = pi_ref, 100 = best-of-N at the KL budget; test data seed)")
        for column in ("policy", "score", "gold", "win rate", "KL budget/end", "- pi_ref", "- shuffled"):
            scores.add_column(column, justify="left" if column == "policy" else "right")
        for row in r.rows:
            scores.add_row(escape(row["label"]), f"{row['mean']:.1f} ± {row['ci95']:.1f}", f"{row['gold']:.2f}",
                           f"{row['win']:.2f}", f"{row['kl']:.2f}/{row['final_kl']:.2f}", _pm(row.get("minus_pi_ref")),
                           _pm(row.get("minus_shuffled")))
        console.print(scores)
    console.print(f"lm: {'passes' if data['passes'] else 'FAILS'} the gates checked", highlight=False)
    console.print(f"wrote {out}/suite_check_lm.md and {out}/suite_check_lm.json", highlight=False)
