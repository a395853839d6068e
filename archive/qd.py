"""Quality-diversity containers: a MAP-Elites grid (`QDArchive`) and a per-complexity Pareto front
(`HallOfFame`).

Both hold candidate *ids* and numbers only; the objectives themselves live in the SQLite store
(`archive.store`).  Both are deterministic functions of the sequence of `add` calls, so they are never
saved: `QDArchive.from_store` / `HallOfFame.from_store` replay a run's evaluated candidates in id order
and get the same state back after a crash or a `--resume`.

The grid follows pyribs' `GridArchive` (Mouret & Clune 2015) exactly where they overlap:

* bin edges are `linspace(low, high, bins + 1)`; a value is binned as
  `int((bins * (value - low) + 1e-6) / (high - low))`, clipped to `[0, bins - 1]`, so values outside the
  range land in the edge cells (pyribs' `index_of`, epsilon included);
* a candidate enters a cell when the cell is empty ("new") or its fitness is strictly greater than the
  elite's ("improved"); ties keep the earlier elite;
* coverage = filled cells / cells; QD-score = sum over filled cells of (fitness - offset).

It differs in one documented way: the QD-score counts `max(fitness - offset, 0)`, so an elite worse than
the offset never lowers the score of an archive that holds it (pyribs lets it go negative).  Fitness here
is a normalised return (0 = random policy, 100 = expert), and the default offset 0 makes the QD-score "the
sum over cells of how much better than random each cell's elite is".

pyribs itself is not used: `ribs` 0.12 installs here, but its archives pull in numba, llvmlite, pandas,
scikit-learn and numpy_groupies (JIT compilation at import) for what is here a dict of cells, and an
elite there is a float solution vector rather than a candidate id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from archive.store import BASELINE_ORIGIN

if TYPE_CHECKING:
    from archive.store import ArchiveStore

BIN_EPSILON = 1e-6  # pyribs' GridArchive epsilon: a value a hair below an edge goes to the upper bin
DEFAULT_FITNESS_OFFSET = 0.0  # normalised score of a random policy


@dataclass(frozen=True)
class DescriptorSpec:
    """One axis of the grid: descriptor `name`, its range [low, high] cut into `bins` equal bins."""

    name: str
    low: float
    high: float
    bins: int

    def __post_init__(self):
        if not self.name:
            raise ValueError("a descriptor needs a name")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"descriptor {self.name!r}: need finite low < high, got [{self.low}, {self.high}]")
        if int(self.bins) != self.bins or self.bins < 1:
            raise ValueError(f"descriptor {self.name!r}: bins must be a positive integer, got {self.bins}")

    @property
    def edges(self) -> np.ndarray:
        """The `bins + 1` bin edges."""
        return np.linspace(self.low, self.high, self.bins + 1)

    def bin_of(self, value: float) -> int:
        """The bin of a finite value; values outside [low, high] go to the edge bins."""
        if not math.isfinite(value):
            raise ValueError(f"descriptor {self.name!r} is not finite: {value}")
        index = int((self.bins * (value - self.low) + BIN_EPSILON) / (self.high - self.low))
        return min(max(index, 0), self.bins - 1)

    def to_dict(self) -> dict:
        return {"name": self.name, "low": self.low, "high": self.high, "bins": self.bins}

    @classmethod
    def from_dict(cls, data: Mapping) -> DescriptorSpec:
        return cls(str(data["name"]), float(data["low"]), float(data["high"]), int(data["bins"]))


class AddStatus(str, Enum):
    """What `QDArchive.add` did (a str, so it prints and compares as 'new' / 'improved' / 'not_added')."""

    NEW = "new"  # the candidate filled an empty cell
    IMPROVED = "improved"  # it replaced a worse elite
    NOT_ADDED = "not_added"  # the cell's elite is at least as good

    def __str__(self) -> str:
        return self.value


Cell = tuple[int, ...]


@dataclass(frozen=True)
class Elite:
    candidate_id: int
    fitness: float
    descriptors: Mapping[str, float]
    cell: Cell


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is not finite: {value}")
    return value


class QDArchive:
    """A MAP-Elites grid over named descriptors: at most one elite (the fittest candidate) per cell."""

    def __init__(self, specs: Sequence[DescriptorSpec], *, fitness_offset: float = DEFAULT_FITNESS_OFFSET):
        if not specs:
            raise ValueError("a QD archive needs at least one descriptor")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate descriptor names: {names}")
        self.specs: tuple[DescriptorSpec, ...] = tuple(specs)
        self.fitness_offset = _finite(fitness_offset, "fitness_offset")
        self._elites: dict[Cell, Elite] = {}
        self._best: Elite | None = None

    # ------------------------------------------------------------------------------------------ cells
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.bins for s in self.specs)

    @property
    def n_cells(self) -> int:
        return math.prod(self.shape)

    def cell_of(self, descriptors: Mapping[str, float]) -> Cell:
        """The grid cell of a descriptor dict (extra keys are ignored; a missing one is a KeyError)."""
        missing = [n for n in self.names if n not in descriptors]
        if missing:
            raise KeyError(f"descriptor(s) {missing} missing; the archive uses {list(self.names)}")
        return tuple(s.bin_of(float(descriptors[s.name])) for s in self.specs)

    # --------------------------------------------------------------------------------------- updating
    def add(self, candidate_id: int, fitness: float, descriptors: Mapping[str, float]) -> AddStatus:
        """Offer a candidate to its cell.  Non-finite fitness or descriptors raise ValueError (reject such
        candidates before they get here)."""
        fitness = _finite(fitness, f"fitness of candidate {candidate_id}")
        cell = self.cell_of(descriptors)
        current = self._elites.get(cell)
        if current is not None and fitness <= current.fitness:
            return AddStatus.NOT_ADDED
        elite = Elite(int(candidate_id), fitness, {n: float(descriptors[n]) for n in self.names}, cell)
        self._elites[cell] = elite
        if self._best is None or fitness > self._best.fitness:
            self._best = elite
        return AddStatus.NEW if current is None else AddStatus.IMPROVED

    def would_improve(self, fitness: float, descriptors: Mapping[str, float]) -> bool:
        """Whether `add` would take this fitness into its cell (new or improved), without adding it."""
        current = self._elites.get(self.cell_of(descriptors))
        return current is None or fitness > current.fitness

    # -------------------------------------------------------------------------------------- reporting
    def __len__(self) -> int:
        return len(self._elites)

    def __contains__(self, cell: Cell) -> bool:
        return tuple(cell) in self._elites

    def elite(self, cell: Cell) -> Elite | None:
        return self._elites.get(tuple(cell))

    def elites(self) -> list[Elite]:
        """All elites, fittest first (ties: lower candidate id first)."""
        return sorted(self._elites.values(), key=lambda e: (-e.fitness, e.candidate_id))

    @property
    def coverage(self) -> float:
        """Fraction of cells holding an elite."""
        return len(self._elites) / self.n_cells

    @property
    def qd_score(self) -> float:
        """Sum over filled cells of max(fitness - fitness_offset, 0)."""
        return float(sum(max(e.fitness - self.fitness_offset, 0.0) for e in self._elites.values()))

    @property
    def best(self) -> Elite | None:
        """The fittest elite ever added (the first one to reach that fitness)."""
        return self._best

    def fitness_grid(self) -> np.ndarray:
        """Elite fitness as an array of `shape`; NaN where a cell is empty."""
        grid = np.full(self.shape, np.nan)
        for cell, elite in self._elites.items():
            grid[cell] = elite.fitness
        return grid

    def stats(self) -> dict[str, float | int | None]:
        """The numbers a live display or a report shows."""
        return {"elites": len(self), "cells": self.n_cells, "coverage": self.coverage,
                "qd_score": self.qd_score, "best_fitness": self._best.fitness if self._best else None,
                "best_id": self._best.candidate_id if self._best else None}

    # ---------------------------------------------------------------------------------------- rebuild
    @classmethod
    def from_rows(cls, rows: Iterable[Mapping], specs: Sequence[DescriptorSpec], *,
                  fitness_offset: float = DEFAULT_FITNESS_OFFSET) -> QDArchive:
        """Replay candidate rows (dicts with `id`, `fitness`, `descriptors`) in the order given.

        Rows without a finite fitness or without every finite descriptor the grid uses are skipped: they
        could not have entered the archive.
        """
        archive = cls(specs, fitness_offset=fitness_offset)
        for row in rows:
            descriptors = row.get("descriptors") or {}
            values = [descriptors.get(n) for n in archive.names]
            if row.get("fitness") is None or not math.isfinite(row["fitness"]):
                continue
            if any(v is None or not math.isfinite(v) for v in values):
                continue
            archive.add(row["id"], row["fitness"], descriptors)
        return archive

    @classmethod
    def from_store(cls, store: ArchiveStore, run_id: int | None, specs: Sequence[DescriptorSpec], *,
                   fitness_offset: float = DEFAULT_FITNESS_OFFSET, include_baselines: bool = True) -> QDArchive:
        """Rebuild a run's archive (all runs when `run_id` is None) from its evaluated candidates, in id
        order; `include_baselines=False` leaves out the zoo baselines (origin "zoo")."""
        return cls.from_rows(_evaluated_rows(store, run_id, include_baselines), specs,
                             fitness_offset=fitness_offset)


# ------------------------------------------------------------------------------------------ hall of fame
@dataclass(frozen=True)
class HallOfFameEntry:
    candidate_id: int
    fitness: float
    complexity: float


COMPLEXITY_DIGITS = 6  # complexities equal after rounding to this many decimals share a slot


class HallOfFame:
    """The best candidate at each complexity, and the Pareto front over (complexity down, fitness up).

    Like PySR's hall of fame: `best_by_complexity` keeps, for every complexity seen, its fittest candidate
    (ties keep the earlier one); `front` keeps only those strictly fitter than every simpler one.
    """

    def __init__(self):
        self._best: dict[float, HallOfFameEntry] = {}

    def add(self, candidate_id: int, fitness: float, complexity: float) -> bool:
        """Offer a candidate; True when it became the best at its complexity.  Non-finite values raise."""
        fitness = _finite(fitness, f"fitness of candidate {candidate_id}")
        key = round(_finite(complexity, f"complexity of candidate {candidate_id}"), COMPLEXITY_DIGITS)
        current = self._best.get(key)
        if current is not None and fitness <= current.fitness:
            return False
        self._best[key] = HallOfFameEntry(int(candidate_id), fitness, key)
        return True

    def __len__(self) -> int:
        return len(self._best)

    def best_by_complexity(self) -> list[HallOfFameEntry]:
        """The fittest candidate at each complexity, simplest first."""
        return [self._best[k] for k in sorted(self._best)]

    def front(self) -> list[HallOfFameEntry]:
        """The Pareto front, simplest first: fitness strictly increases along it."""
        front: list[HallOfFameEntry] = []
        for entry in self.best_by_complexity():
            if not front or entry.fitness > front[-1].fitness:
                front.append(entry)
        return front

    def would_join_front(self, fitness: float, complexity: float) -> bool:
        """Whether a candidate of this fitness and complexity would be on the front: fitter than every entry
        as simple or simpler."""
        key = round(complexity, COMPLEXITY_DIGITS)
        return all(fitness > e.fitness for e in self._best.values() if e.complexity <= key)

    def is_on_front(self, candidate_id: int) -> bool:
        return any(e.candidate_id == candidate_id for e in self.front())

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> HallOfFame:
        """Replay candidate rows (dicts with `id`, `fitness`, `complexity`), skipping incomplete ones."""
        hof = cls()
        for row in rows:
            fitness, complexity = row.get("fitness"), row.get("complexity")
            if fitness is None or complexity is None or not (math.isfinite(fitness) and math.isfinite(complexity)):
                continue
            hof.add(row["id"], fitness, complexity)
        return hof

    @classmethod
    def from_store(cls, store: ArchiveStore, run_id: int | None, *, include_baselines: bool = True) -> HallOfFame:
        """Rebuild a run's hall of fame like `QDArchive.from_store`."""
        return cls.from_rows(_evaluated_rows(store, run_id, include_baselines))


def _evaluated_rows(store: ArchiveStore, run_id: int | None, include_baselines: bool) -> list[dict]:
    rows = store.candidates(run_id=run_id, status="evaluated", order_by="id", with_objective=False)
    return [r for r in rows if include_baselines or r["origin"] != BASELINE_ORIGIN]
