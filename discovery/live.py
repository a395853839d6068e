"""The live view of `discover run`, its one-line-per-generation form for logs, and its final report."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from discovery.cli_archive import formula_cell
from discovery.report import data_seeds_text, racing_line, table_rows
from discovery.search import Generation, Search
from discovery.text import printable

RECENT_ELITES = 6
TOP_REASONS = 6


def _fmt(x: float | None, ci: float | None = None, units: int | None = None) -> str:
    """A score, its CI when there is one (none is stored from fewer than 3 units), and its seed units."""
    if x is None:
        return "—"
    n = f" (n={units})" if units else ""
    return (f"{x:6.1f} ± {ci:4.1f}" if ci is not None else f"{x:6.1f}") + n


def _budget(search: Search) -> str:
    cfg, parts = search.cfg, []
    if cfg.max_evaluations is not None:
        parts.append(f"{search.evaluations()}/{cfg.max_evaluations} evaluations")
    if cfg.max_seconds is not None:
        parts.append(f"{search.elapsed():.0f}/{cfg.max_seconds:.0f} s")
    return ", ".join(parts)


def _rate(search: Search) -> str:
    """Objectives trained per second, baselines included."""
    elapsed = search.elapsed()
    return f"{search.trained() / elapsed:.2f}" if elapsed > 0 else "—"


def progress_line(search: Search, g: Generation) -> str:
    """One generation as one line, for output that is not a terminal (a log file, CI, nohup)."""
    found, baseline = search.best(), search.best_baseline()
    return (f"generation {g.index} {g.proposer}: {g.evaluated} trained, {g.rejected} rejected | {_budget(search)}"
            f" | {_rate(search)} evals/s | best found "
            f"{_fmt(found and found['fitness'], found and found['ci95'], found and found['units']).strip()}"
            + (f" vs {baseline[0]} {baseline[1]:.1f}" if baseline else "")
            + f" | coverage {search.qd.coverage:.0%}" + (f" | {printable(g.note)}" if g.note else ""))


def live_view(search: Search, history: list[Generation], status: str) -> Panel:
    best, baseline = search.qd.best, search.best_baseline()
    found = search.best()
    head = Table.grid(padding=(0, 2))
    head.add_row("run", f"#{search.run_id}", "generation", str(search.generation), "budget", _budget(search))
    head.add_row("evals/s", _rate(search), "coverage", f"{search.qd.coverage:.0%}",
                 "QD-score", f"{search.qd.qd_score:.0f}")
    head.add_row("best found", _fmt(found and found["fitness"], found and found["ci95"], found and found["units"]),
                 "best baseline", f"{baseline[0]} {baseline[1]:.1f}" if baseline else "—",
                 "archive best", f"#{best.candidate_id} {best.fitness:.1f}" if best else "—")

    elites = Table(title="recent elites", title_justify="left", expand=True)
    for col in ("id", "gen", "origin", "fitness"):
        elites.add_column(col, justify="right" if col != "origin" else "left", no_wrap=True)
    elites.add_column("formula", overflow="ellipsis", no_wrap=True)
    recent = [cid for g in history for cid in g.improved][-RECENT_ELITES:]
    for cid in reversed(recent):
        c = search.store.candidate(cid)
        elites.add_row(str(cid), str(c["generation"]), c["origin"], _fmt(c["fitness"], c["ci95"], c["units"]),
                       formula_cell(c))

    reasons = Table(title="rejections by kind", title_justify="left", expand=True)
    reasons.add_column("count", justify="right")
    reasons.add_column("kind", no_wrap=True)
    reasons.add_column("latest example", overflow="ellipsis", no_wrap=True)
    for grp in search.store.rejection_groups(search.run_id)[:TOP_REASONS]:
        reasons.add_row(str(grp.count), grp.kind, printable(grp.example))

    last = history[-1] if history else None
    line = Text(printable(status), style="bold")
    if last is not None:
        line.append(f"   last: gen {last.index} {last.proposer}: {last.evaluated} trained, {last.rejected} rejected"
                    + (f" ({printable(last.note)})" if last.note else ""), style="dim")
    return Panel(Group(head, elites, reasons, line), title="discover run", border_style="cyan")


def report_table(report: dict) -> Group:
    """The final report (`discovery.report`) as a terminal table, with the racing line under it."""
    head, cells = table_rows(report)
    table = Table(title=f"final report: {report['protocol']}; {data_seeds_text(report)}; baselines "
                        f"{report['baselines']}; {report['test']}", title_justify="left")
    for i, col in enumerate(head):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row, r in zip(cells, report["rows"]):
        blind = r.get("label_use") == "does not use the preferences"
        style = "yellow" if blind else {"better": "bold green", "worse": "red"}.get(
            r.get("verdict"), "dim" if r["kind"] == "baseline" and not r["best_baseline"] else None)
        table.add_row(*row, style=style)
    line = racing_line(report)
    return Group(table, Text(line)) if line else Group(table)
