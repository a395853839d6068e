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
