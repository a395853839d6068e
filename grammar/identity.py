"""A loss's identity, computed once: its text, structure hash, dedupe key and complexity.

Proposals carry it (`discovery.proposers.Proposed.identity`) from the proposer through screening into
the archive, so the canonical form of a candidate is computed once on its way.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from grammar.canonical import complexity, structure_hash
from grammar.language import SYMBOLS
from grammar.objective import Objective
from grammar.parser import to_text

DEDUPE_DIGITS = 4  # significant digits of constants in the dedupe key


@dataclass(frozen=True)
class Identity:
    formula: str  # the loss as text (grammar.parser)
    structure_hash: str  # the canonical form with its constants symbolic
    dedupe_key: str  # the canonical form with the constants' values (rounded): what "seen before" means
    complexity: float


def identify(objective: Objective) -> Identity:
    return Identity(to_text(objective.loss_expr()), structure_hash(objective), dedupe_key(objective),
                    float(complexity(objective)))


def dedupe_key(objective: Objective) -> str:
    """The structure hash of the loss with every constant replaced by its value rounded to
    `DEDUPE_DIGITS` significant digits.

    Substituting the values (rather than appending them to the symbolic hash) keeps the key right when
    the canonical form renames free constants (c0*x + c1*y with c0=1, c1=2 is not c1*x + c0*y with the
    same values) and lets constants that make a term vanish (eps = 0) dedupe with the simpler loss.
    """
    values = {SYMBOLS[n]: sympy.Rational(f"{v:.{DEDUPE_DIGITS}g}") for n, v in objective.constants.items()}
    return structure_hash(objective.loss_expr().xreplace(values))


GREEK = {"beta": "β", "eps": "ε", "gamma": "γ", "tau": "τ", "lam": "λ", "delta": "δ"}


@dataclass(frozen=True)
class ZooMatch:
    """A loss whose canonical structure (constants aside) is a zoo loss's: that loss at these constants."""

    name: str
    constants: tuple[tuple[str, float], ...]  # the constants the structure uses, by name

    def describe(self) -> str:
        """E.g. "apo_zero at β 0.0127" (a zoo loss without constants: just its name)."""
        values = ", ".join(f"{GREEK.get(n, n)} {v:.3g}" for n, v in self.constants)
        return f"{self.name} at {values}" if values else self.name


def _zoo_structures() -> dict[str, str]:
    global _ZOO_STRUCTURES
    if _ZOO_STRUCTURES is None:
        from grammar.zoo import ZOO

        _ZOO_STRUCTURES = {}
        for name, entry in ZOO.items():  # the first zoo name of a structure names it
            _ZOO_STRUCTURES.setdefault(structure_hash(entry.objective), name)
    return _ZOO_STRUCTURES


_ZOO_STRUCTURES: dict[str, str] | None = None


def zoo_match(objective: Objective, structure: str | None = None) -> ZooMatch | None:
    """The zoo loss ``objective`` is structurally (`structure_hash`: constants symbolic) equal to, or None.
    ``structure``: the objective's structure hash when already known (a stored candidate's)."""
    name = _zoo_structures().get(structure or structure_hash(objective))
    if name is None:
        return None
    used = {s.name for s in objective.loss_expr().free_symbols}
    return ZooMatch(name, tuple((n, float(v)) for n, v in objective.constants.items() if n in used))
