"""Canonical form, structural hash, complexity and behaviour fingerprint.

The canonical form is for *identity*, not for computing: it rewrites with mathematical identities that
may be numerically worse (compile the objective as written).  It is a bounded set of fast rewrites, not
`sympy.simplify`:

1. function identities: logsigmoid(x) -> -softplus(-x); relu(x) -> max(x, 0); sigmoid(x) with a
   "negative-looking" argument -> 1 - sigmoid(-x) (sympy already does tanh(-x) -> -tanh(x));
2. distribution of products over sums and of small integer powers (bounded: a product whose expansion
   would exceed `EXPAND_BUDGET` terms stays as it is), bottom-up, inside function arguments too;
3. `factor_terms`, which pulls common factors back out (a deterministic function of the expanded form);
4. free constants c0..c9 renamed in an order that does not depend on their names.

sympy itself sorts commutative arguments and collects like terms, so `a+b` and `b+a`, `2*x` and `x+x`,
`beta*(a-b)` and `beta*a - beta*b` get the same form.  Constants stay symbols: the structural hash
ignores their values; the behaviour fingerprint uses them.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import sympy

from grammar.compile import compile_numpy
from grammar.language import LEAF_COST, NODE_COST, SYMBOLS, logsigmoid, relu, sigmoid, softplus
from grammar.objective import Objective
from grammar.probes import random_inputs

EXPAND_BUDGET = 64  # most terms one product or power may expand into
FINGERPRINT_PROBES = 64
FINGERPRINT_SEED = 20241110
FINGERPRINT_DIGITS = 8  # significant digits kept
FINGERPRINT_FLOOR = 1e-12  # |values| below it count as 0

_USER_CONSTANTS = tuple(SYMBOLS[f"c{i}"] for i in range(10))
_MARK, _OTHER = sympy.Symbol("_this", real=True), sympy.Symbol("_other", real=True)


def _expr(source: Objective | sympy.Expr) -> sympy.Expr:
    return source.loss_expr() if isinstance(source, Objective) else source


def _n_terms(e: sympy.Expr) -> int:
    return len(e.args) if e.is_Add else 1


def _expanded_size(e: sympy.Expr) -> int:
    if e.is_Mul:
        return math.prod(_n_terms(f) for f in e.args)
    if e.is_Pow and e.exp.is_Integer and e.exp > 1 and e.base.is_Add:
        n, k = _n_terms(e.base), int(e.exp)
        return math.comb(n + k - 1, k)
    return 1


def _rewrite(e: sympy.Expr) -> sympy.Expr:
    if not e.args:
        return e
    args = [_rewrite(a) for a in e.args]
    if isinstance(e, logsigmoid):
        return -_rewrite(softplus(-args[0]))
    if isinstance(e, relu):
        return sympy.Max(args[0], 0)
    if isinstance(e, sigmoid) and args[0].could_extract_minus_sign():
        return 1 - sigmoid(_rewrite(-args[0]))
    e = e.func(*args)
    if 1 < _expanded_size(e) <= EXPAND_BUDGET:
        e = sympy.expand(e, deep=False, mul=True, multinomial=True, power_exp=False, power_base=False,
                         log=False, basic=False)
    return e


def _rename_user_constants(e: sympy.Expr) -> sympy.Expr:
    """Rename c0..c9 in an order that does not depend on their names: by the form of the expression
    seen from each constant (that constant marked, the other free constants anonymous)."""
    used = [c for c in _USER_CONSTANTS if c in e.free_symbols]
    if not used:
        return e

    def view(c: sympy.Symbol) -> str:
        return sympy.srepr(e.xreplace({o: (_MARK if o == c else _OTHER) for o in used}))

    order = sorted(used, key=view)
    return e.xreplace(dict(zip(order, _USER_CONSTANTS)))


def canonical_form(source: Objective | sympy.Expr) -> sympy.Expr:
    """The canonical form of a loss (or any language expression)."""
    e = _rewrite(_expr(source))
    e = sympy.factor_terms(e)
    return _rename_user_constants(e)


def structure_hash(source: Objective | sympy.Expr) -> str:
    """SHA-256 (hex) of the canonical form's `srepr`: equal for the same loss written differently."""
    return hashlib.sha256(sympy.srepr(canonical_form(source)).encode()).hexdigest()


def complexity(source: Objective | sympy.Expr) -> float:
    """Operator-cost-weighted node count of the canonical form (same hash => same complexity)."""
    total = 0.0
    for node in sympy.preorder_traversal(canonical_form(source)):
        if not node.args:
            total += LEAF_COST
        else:
            n_ops = len(node.args) - 1 if isinstance(node, (sympy.Add, sympy.Mul, sympy.Min, sympy.Max)) else 1
            total += NODE_COST.get(type(node), 1.0) * n_ops
    return total


def _probes() -> dict[str, np.ndarray]:
    return random_inputs(FINGERPRINT_PROBES, FINGERPRINT_SEED)


def fingerprint(objective: Objective | sympy.Expr, constants: dict[str, float] | None = None) -> str:
    """SHA-256 (hex) of the loss on a fixed seeded probe set, in float64, rounded.

    Two losses that are numerically identical (constants included) get the same fingerprint.
    """
    values = compile_numpy(objective)(_probes(), constants)
    values = np.broadcast_to(values, (FINGERPRINT_PROBES,))
    tokens = []
    for v in values.tolist():
        if not math.isfinite(v):
            tokens.append(repr(v))
        elif abs(v) < FINGERPRINT_FLOOR:
            tokens.append("0")
        else:
            tokens.append(f"{v:.{FINGERPRINT_DIGITS - 1}e}")
    return hashlib.sha256(",".join(tokens).encode()).hexdigest()
