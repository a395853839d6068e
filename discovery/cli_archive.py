"""`discover archive ...`: browse the archive of found losses (read-only; safe while a run writes).

    list      candidates of a run, sortable, with a run summary and rejections grouped by kind
    show ID   one loss: formula, LaTeX, constants, scores next to the run's baselines, lineage, LLM
              exchange, and a loss-shape PNG
    map       the quality-diversity grid as a table, a heat-map PNG and a fitness-over-time PNG
    lineage   the ancestry tree of a candidate
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from archive.store import REPORT_KEY
from discovery.text import printable
from discovery.ui import console, user_errors

archive_app = typer.Typer(help="Browse the archive of discovered losses.", no_args_is_help=True)


ArchiveOpt = typer.Option("runs/archive.db", "--archive", help="archive file")
RunOpt = typer.Option(None, "--run", help="run id (default: the latest run)")
PlotsOpt = typer.Option("runs/plots", "--plots", help="folder for PNG figures")
DescriptorsOpt = typer.Option(None, "--descriptors",
                              help="grid axes, e.g. 'complexity,saturation' or 'complexity=0:60:12,asymmetry' "
                                   "(default: the run's config, else complexity,saturation)")
SORTS = {"fitness": ("fitness", True), "fresh": ("fresh_fitness", True), "complexity": ("complexity", False),
         "id": ("id", False), "generation": ("generation", False)}
FORMULA_CHARS = 60
LIST_FIXED_WIDTH = 82  # width of `list`'s columns other than the formula, borders included
EXCERPT_CHARS = 1200


# ------------------------------------------------------------------------------------------ helpers
def _open(path: str):
    from archive.store import ArchiveStore

    return ArchiveStore(path, readonly=True)


def _run(store, run_id: int | None) -> dict:
    from archive.store import ArchiveError

    if run_id is not None:
        return store.run(run_id)
    run = store.latest_run()
    if run is None:
        raise ArchiveError(f"the archive {store.path} has no runs yet")
    return run


def _specs(run: dict, option: str | None):
    from archive.descriptors import specs_from

    return specs_from(option if option else run["config"].get("descriptors"))


def _pm(value: float | None, ci: float | None = None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if ci is None or math.isnan(ci):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {ci:.{digits}f}"


def _scored(c: dict) -> str:
    """Fitness with its CI (none is stored from fewer than 3 seed units) and the units behind it; "≤" marks a
    plain score, an upper bound of the figure the search ranks by (no shuffled twins: it could not enter
    the elites)."""
    bound = "≤ " if c.get("controlled") is False else ""
    return bound + _pm(c["fitness"], c["ci95"]) + (f" (n={c['units']})" if c.get("units") else "")


def _origin(c: dict) -> str:
    from archive.store import BASELINE_ORIGIN

    return f"{c['origin']}:{c['name']}" if c["origin"] == BASELINE_ORIGIN else c["origin"]


SHORT_NAMES = {"saturation": "sat", "asymmetry": "asym", "imitation": "imit"}


def _descriptors(c: dict) -> str:
    """Behavioural descriptors, abbreviated (complexity has its own column)."""
    return " ".join(f"{SHORT_NAMES.get(name, name)} {value:.2f}" for name, value in c["descriptors"].items()
                    if name != "complexity")


def zoo_structure(c: dict) -> str | None:
    """The zoo loss a stored candidate is, constants aside ("dpo at β 0.3"; `grammar.identity.zoo_match`)."""
    from grammar.identity import zoo_match

    match = zoo_match(c["objective"], c["structure_hash"])
    return match.describe() if match else None


def formula_cell(c: dict, limit: int = 90) -> Text:
    """A stored candidate's formula as one line of a table cell (no markup: "[beta=0.3]" stays), after
    "= dpo at β 0.3: " when its structure is a zoo loss's."""
    zoo = zoo_structure(c)
    mark = f"= {zoo}: " if zoo else ""
    return Text(mark + c["objective"].short_text(max(16, limit - len(mark))), no_wrap=True, overflow="ellipsis")


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _baselines(store, run_id: int) -> list[dict]:
    from archive.store import BASELINE_ORIGIN

    return [c for c in store.candidates(run_id, status="evaluated", origin_prefix=BASELINE_ORIGIN,
                                        order_by="fitness", descending=True, with_objective=False)
            if c["origin"] == BASELINE_ORIGIN]


def _summary(store, run: dict, specs) -> str:
    from archive.qd import QDArchive
    from archive.store import BASELINE_ORIGIN

    qd = QDArchive.from_store(store, run["id"], specs)
    counts = store.status_counts(run["id"])
    found = [c for c in [store.best_found(run["id"])] if c]
    baselines = _baselines(store, run["id"])
    space = "any loss (--allow-non-monotone)" if run["config"].get("allow_non_monotone") else \
        "monotone preference losses"
    parts = [f"run {run['id']} ({run['status']}, seed {run['seed']}, code {run['code_version']}, searched {space})",
             f"{sum(counts.values())} candidates: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
             f"coverage {qd.coverage:.0%} of {qd.n_cells} cells ({' x '.join(qd.names)})",
             f"QD-score {qd.qd_score:.1f}",
             "best found " + (f"{_scored(found[0])} (#{found[0]['id']})" if found else "-"),
             "best baseline " + (f"{baselines[0]['fitness']:.1f} ({baselines[0]['name']})"
                                 if baselines else "-")]
    return " | ".join(parts[:2]) + "\n" + " | ".join(parts[2:])


# ---------------------------------------------------------------------------------------------- list
@archive_app.command("list")
@user_errors
def list_candidates(
    archive: str = ArchiveOpt, run: int = RunOpt,
    sort: str = typer.Option("fitness", "--sort", help="fitness, fresh, complexity, id or generation"),
    reverse: bool = typer.Option(False, "--reverse", help="reverse the sort order"),
    status: str = typer.Option(None, "--status", help="evaluated, rejected or failed (default: all)"),
    origin: str = typer.Option(None, "--origin", help="origin prefix, e.g. zoo, gp, llm"),
    limit: int = typer.Option(30, "--limit", min=0, help="rows to show (0: all)"),
    descriptors: str = DescriptorsOpt,
):
    """Candidates of a run in a table, with the run summary and rejections grouped by kind."""
    from archive.store import CANDIDATE_STATUSES

    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    if status is not None and status not in CANDIDATE_STATUSES:
        raise ValueError(f"unknown status {status!r}; use one of {', '.join(CANDIDATE_STATUSES)}")
    with _open(archive) as store:
        r = _run(store, run)
        column, descending = SORTS[sort]
        rows = store.candidates(r["id"], status=status, origin_prefix=origin, order_by=column,
                                descending=descending != reverse, limit=limit or None)
        console.print(_summary(store, r, _specs(r, descriptors)), highlight=False)
        table = Table(title=f"run {r['id']}: {len(rows)} candidate(s), by {sort}")
        for name, justify in (("id", "right"), ("gen", "right"), ("origin", "left"), ("fitness ± ci (n)", "right"),
                              ("fresh ± ci", "right"), ("complexity", "right"), ("descriptors", "left"),
                              ("formula", "left")):
            # the formula's cells are one line each (`formula_cell`); only its column shrinks to fit the terminal
            table.add_column(name, justify=justify, no_wrap=name != "formula", overflow="ellipsis",
                             min_width=None if name == "formula" else len(name))
        for c in rows:
            fitness = _scored(c) if c["status"] == "evaluated" else f"[dim]{c['status']}[/dim]"
            table.add_row(str(c["id"]), str(c["generation"]), _origin(c), fitness,
                          _pm(c["fresh_fitness"], c["fresh_ci95"]), f"{c['complexity']:.0f}", _descriptors(c),
                          formula_cell(c, console.width - LIST_FIXED_WIDTH))
        console.print(table)
        if status in (None, "rejected"):
            _print_llm_refusals(store, r["id"], limit)
        groups = store.rejection_groups(r["id"])
        if groups:
            rt = Table(title="rejections by kind")
            rt.add_column("count", justify="right")
            rt.add_column("kind")
            rt.add_column("proposers")
            rt.add_column("latest example", overflow="fold")
            for grp in groups:
                rt.add_row(str(grp.count), grp.kind, ", ".join(grp.sources), _cut(printable(grp.example), 160))
            console.print(rt)


def _print_llm_refusals(store, run_id: int, limit: int) -> None:
    """Proposals refused inside LLM answers: they never became candidates, so the table above lacks them."""
    rows = [(x["id"], snippet, reason) for x in store.exchanges(run_id) for snippet, reason in x["rejections"]]
    if not rows:
        return
    table = Table(title=f"refused inside LLM answers: {len(rows)}" + (f", the last {limit}" if limit and
                                                                       len(rows) > limit else ""))
    for name in ("exchange", "reason", "proposal"):
        table.add_column(name, justify="right" if name == "exchange" else "left", overflow="fold")
    for exchange_id, snippet, reason in rows[-limit if limit else 0:]:
        table.add_row(f"#{exchange_id}", printable(reason), _cut(printable(snippet), FORMULA_CHARS))
    console.print(table)


# ---------------------------------------------------------------------------------------------- show
def _per_combo(rows: list[dict]) -> dict[tuple[str, str], str]:
    """'mean ± 95% CI over seeds' per (task, dataset) from score rows (no CI from fewer than 3 seeds)."""
    import numpy as np

    from discovery.racing import MIN_CI_UNITS
    from evaluators.scoring import mean_ci95

    by_combo = defaultdict(list)
    for row in rows:
        by_combo[(row["task"], row["dataset"])].append(row["score"])
    out = {}
    for combo, values in by_combo.items():
        mean, ci = mean_ci95(np.asarray(values, dtype=float))
        out[combo] = f"{_pm(float(mean), float(ci) if len(values) >= MIN_CI_UNITS else None)} (n={len(values)})"
    return out


def _scores_table(store, candidate: dict, baselines: list[dict]) -> Table | None:
    entries = []  # (label, per-combo, overall, style)
    for c, label, style in [(candidate, f"#{candidate['id']} (this)", "bold")] + \
            [(b, f"{b['name']} (#{b['id']})", None) for b in baselines if b["id"] != candidate["id"]]:
        for fresh in (False, True):
            rows = store.scores(c["id"], fresh=fresh)
            if rows:
                overall = _pm(c["fresh_fitness"], c["fresh_ci95"]) if fresh else _pm(c["fitness"], c["ci95"])
                entries.append((label + (" fresh seeds" if fresh else ""), _per_combo(rows), overall, style))
    if not entries:
        return None
    combos = sorted({k for _, per, _, _ in entries for k in per})
    table = Table(title="normalised score, mean ± 95% CI over seeds (baselines: same run)")
    table.add_column("objective")
    for task, dataset in combos:
        table.add_column(f"{task}\n{dataset}", justify="right")
    table.add_column("fitness", justify="right")
    for label, per, overall, style in entries:
        table.add_row(label, *(per.get(k, "-") for k in combos), overall, style=style)
    return table


def _lineage_table(store, candidate_id: int) -> Table:
    table = Table(title="lineage (nearest first)")
    for name in ("depth", "id", "gen", "origin", "parents", "fitness ± ci", "formula"):
        table.add_column(name, justify="right" if name in ("depth", "id", "gen") else "left")
    for c in store.lineage(candidate_id):
        table.add_row(str(c["depth"]), str(c["id"]), str(c["generation"]), _origin(c),
                      ", ".join(map(str, c["parents"])) or "-", _pm(c["fitness"], c["ci95"]),
                      _cut(c["formula"], FORMULA_CHARS))
    return table


@archive_app.command("show")
@user_errors
def show(candidate_id: int = typer.Argument(..., help="candidate id"), archive: str = ArchiveOpt,
         run: int = typer.Option(None, "--run", help="compare with this run's baselines (default: the "
                                                     "candidate's own run)"),
         plots: str = PlotsOpt, plot: bool = typer.Option(True, help="write the loss-shape PNG")):
    """One loss: formula, LaTeX, constants, scores vs the run's baselines, lineage, LLM exchange, plot."""
    import sympy

    from grammar.export import export

    with _open(archive) as store:
        c = store.candidate(candidate_id)
        compare_run = c["run_id"] if run is None else store.run(run)["id"]
        obj = c["objective"]
        console.print(f"[bold]candidate #{c['id']}[/bold]  {obj.name!r}  run {c['run_id']}  generation "
                      f"{c['generation']}  origin {_origin(c)}  status {c['status']}"
                      + (f"  ({c['seconds']:.1f} s)" if c["seconds"] is not None else ""), highlight=False)
        if c["reason"]:
            console.print(f"reason: {c['reason']}", highlight=False)
        console.print(f"fitness {_scored(c)}   fresh seeds {_pm(c['fresh_fitness'], c['fresh_ci95'])}"
                      f"   complexity {c['complexity']:.0f}   {_descriptors(c)}", highlight=False)
        if c.get("controlled") is not None:
            console.print("fitness: " + ("what the labels add (its score less its label-shuffled twins' gain over "
                                         "pi_ref, on the same units)" if c["controlled"] else
                                         "its plain score, an upper bound (it could not enter the elites, so no "
                                         "shuffled twins were trained)"), highlight=False)
        console.print(f"zoo structure: {zoo_structure(c) or 'none (a new structure)'}", highlight=False)
        parts = Table(title=f"formula ({obj.shape} shape)", show_header=False)
        for part, expr in obj.parts().items():
            parts.add_row(part, _text(expr))
        parts.add_row("loss (pretty)", sympy.pretty(obj.loss_expr(), use_unicode=True, num_columns=160))
        console.print(parts)
        console.print("LaTeX:\n" + export(obj, "latex"), highlight=False, markup=False)
        if obj.constants:
            ct = Table(title="constants")
            for name in ("name", "value", "range"):
                ct.add_column(name)
            for name, value in obj.constants.items():
                low, high = obj.ranges[name]
                ct.add_row(name, f"{value:g}", f"[{low:g}, {high:g}]")
            console.print(ct)
        scores = _scores_table(store, c, _baselines(store, compare_run))
        console.print(scores if scores is not None else "no scores recorded")
        report = store.get_state(c["run_id"], REPORT_KEY)
        if report:
            from discovery.live import report_table

            console.print(report_table(report))
        console.print(_lineage_table(store, c["id"]))
        if c["exchange_id"] is not None:
            _print_exchange(store.exchange(c["exchange_id"]))
        if plot:
            from archive.plots import plot_loss_shape

            path = plot_loss_shape(obj, os.path.join(plots, f"candidate-{c['id']}-shape.png"))
            console.print(f"loss shape: {path}", highlight=False)


def _text(expr) -> str:
    from grammar.parser import to_text

    return to_text(expr)


def _print_exchange(x: dict) -> None:
    console.print(f"[bold]LLM exchange #{x['id']}[/bold]: {escape(printable(x['proposer']))} / "
                  f"{escape(printable(x['model']))}, prompt {escape(x['prompt_version'])}, {x['seconds']:.1f} s"
                  + (f", answer as {x['answer_shape']}" if x["answer_shape"] else "")
                  + (f", usage {escape(str(x['usage']))}" if x["usage"] else ""), highlight=False)
    prompt = printable(x["prompt"])
    console.print("prompt (end):\n" + ("…" + prompt[-EXCERPT_CHARS:] if len(prompt) > EXCERPT_CHARS else prompt),
                  markup=False, highlight=False)
    if x["answer"] is not None:
        console.print("answer:\n" + _cut(printable(x["answer"]), EXCERPT_CHARS), markup=False, highlight=False)
    if x["error"]:
        console.print(f"error: {printable(x['error'])}", markup=False, highlight=False)
    for snippet, reason in x["rejections"]:
        console.print(f"refused: {printable(reason)}: {_cut(printable(snippet), FORMULA_CHARS)}", markup=False,
                      highlight=False)


# ----------------------------------------------------------------------------------------------- map
@archive_app.command("map")
@user_errors
def map_(archive: str = ArchiveOpt, run: int = RunOpt, plots: str = PlotsOpt, descriptors: str = DescriptorsOpt):
    """The quality-diversity grid as a table, plus heat-map and fitness-over-time PNGs."""
    from archive.plots import run_plots
    from archive.qd import HallOfFame, QDArchive

    with _open(archive) as store:
        r = _run(store, run)
        specs = _specs(r, descriptors)
        qd = QDArchive.from_store(store, r["id"], specs)
        console.print(_summary(store, r, specs), highlight=False)
        best = {}  # (row bin, column bin) -> best elite over any further axes
        for e in qd.elites():
            key = (e.cell[0], e.cell[1] if len(e.cell) > 1 else 0)
            best.setdefault(key, e)  # elites() is fittest first
        rows_spec, cols_spec = specs[0], specs[1] if len(specs) > 1 else None
        title = f"elite fitness #id: {rows_spec.name} (rows) x {cols_spec.name if cols_spec else '-'} (columns)"
        if len(specs) > 2:
            title += f", best over {', '.join(s.name for s in specs[2:])}"
        table = Table(title=title)
        table.add_column(rows_spec.name, justify="right")
        col_edges = cols_spec.edges if cols_spec else [math.nan, math.nan]
        for j in range(len(col_edges) - 1):
            table.add_column(f"{col_edges[j]:.3g}..{col_edges[j + 1]:.3g}" if cols_spec else "elite",
                             justify="right")
        edges = rows_spec.edges
        for i in range(rows_spec.bins):
            cells = [best.get((i, j)) for j in range(len(col_edges) - 1)]
            table.add_row(f"{edges[i]:.3g}..{edges[i + 1]:.3g}",
                          *(f"{e.fitness:.1f} #{e.candidate_id}" if e else "[dim]·[/dim]" for e in cells))
        console.print(table)
        front = HallOfFame.from_store(store, r["id"]).front()
        if front:
            ft = Table(title="Pareto front: fitness vs complexity")
            for name in ("complexity", "fitness", "id"):
                ft.add_column(name, justify="right")
            for e in front:
                ft.add_row(f"{e.complexity:.0f}", f"{e.fitness:.1f}", str(e.candidate_id))
            console.print(ft)
        paths = run_plots(store, r["id"], qd, plots)
        console.print(f"heat map: {paths['map']}\nfitness over time: {paths['fitness']}", highlight=False)


# ------------------------------------------------------------------------------------------- lineage
@archive_app.command("lineage")
@user_errors
def lineage(candidate_id: int = typer.Argument(..., help="candidate id"), archive: str = ArchiveOpt):
    """The ancestry tree of a candidate: origin, generation, fitness and formula of each ancestor."""
    with _open(archive) as store:
        by_id = {c["id"]: c for c in store.lineage(candidate_id)}

        def label(c: dict) -> str:
            return (f"[bold]#{c['id']}[/bold] {_origin(c)} gen {c['generation']}  fitness "
                    f"{_pm(c['fitness'], c['ci95']) if c['status'] == 'evaluated' else c['status']}  "
                    f"[dim]{_cut(c['formula'], FORMULA_CHARS)}[/dim]")

        shown: set[int] = set()

        def grow(node: Tree, c: dict) -> None:
            shown.add(c["id"])
            for p in c["parents"]:
                if p in shown:  # reached again through another parent
                    node.add(f"#{p} (shown above)")
                else:
                    grow(node.add(label(by_id[p])), by_id[p])

        root = Tree(label(by_id[candidate_id]))
        grow(root, by_id[candidate_id])
        console.print(root)
        console.print(f"{len(by_id)} candidate(s) in the lineage", highlight=False)
