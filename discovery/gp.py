"""Genetic programming over the grammar's typed expression trees.

An individual is a grammar ``Objective``. Variation acts on one part at a time (for the MPO shape:
phi_inv over u, g over the margin z, psi over one side's variables, the imitation weight over t; for
the free shape: the whole loss), with the names that part allows, so every child stays in the
language. Operators: subtree mutation, point mutation, insertion, deletion (hoist), crossover (a part
or a subtree from another parent), constant perturbation and simplification. Children beyond
``max_complexity`` are discarded here; validity (finite, monotone) is judged by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from grammar.canonical import complexity
from grammar.language import (
    CONSTANTS_BY_NAME, OPERATORS, PART_NAMES, SYMBOLS, GrammarError, PhiInv, check_tree,
)
from grammar.objective import MPO_PARTS, Objective
from grammar.parser import parse, to_text

UNARY = [op for op in OPERATORS.values() if op.arity == 1 and op.name != "neg"]
BINARY = [op for op in OPERATORS.values() if op.arity == 2 and op.name not in ("**", "pow", "-")]
PART_WEIGHTS = {"g": 0.45, "phi_inv": 0.25, "imitation": 0.15, "psi": 0.15}
SEARCH_CONSTANTS = ("beta", "eps", "gamma", "tau", "lam", "c0", "c1", "c2")
OPERATOR_NAMES = ("subtree", "point", "insert", "delete", "crossover", "constants", "simplify")


@dataclass(frozen=True)
class GPConfig:
    max_complexity: float = 100.0  # the QD grid's complexity axis spans [0, 100]
    max_depth_new: int = 2  # depth of freshly grown subtrees
    constant_sigma: float = 0.3  # log-normal perturbation of constants
    operator_weights: tuple[float, ...] = (0.25, 0.2, 0.15, 0.1, 0.15, 0.1, 0.05)
    max_tries: int = 20


# -- tree surgery ------------------------------------------------------------------------------

def positions(expr: sympy.Expr) -> list[tuple[int, ...]]:
    """Paths (tuples of argument indices) of every node of ``expr``, root first."""
    out = [()]
    for i, arg in enumerate(expr.args):
        out.extend((i, *p) for p in positions(arg))
    return out


def node_at(expr: sympy.Expr, path: tuple[int, ...]) -> sympy.Expr:
    for i in path:
        expr = expr.args[i]
    return expr


def replace_at(expr: sympy.Expr, path: tuple[int, ...], new: sympy.Expr) -> sympy.Expr:
    if not path:
        return new
    args = list(expr.args)
    args[path[0]] = replace_at(args[path[0]], path[1:], new)
    return expr.func(*args)


def leaves_for(part: str) -> list[sympy.Expr]:
    names = [SYMBOLS[n] for n in PART_NAMES[part]]
    if part == "psi":
        names += [PhiInv(SYMBOLS["logp"]), PhiInv(SYMBOLS["mlogp"]), PhiInv(SYMBOLS["ref"]), PhiInv(SYMBOLS["mref"])]
    return names


def random_leaf(part: str, rng: np.random.Generator) -> sympy.Expr:
    r = rng.random()
    if r < 0.6:
        choices = leaves_for(part)
        return choices[rng.integers(len(choices))]
    if r < 0.85:
        return SYMBOLS[SEARCH_CONSTANTS[rng.integers(len(SEARCH_CONSTANTS))]]
    return sympy.Rational(int(rng.choice([-2, -1, 1, 2, 3])), int(rng.choice([1, 2, 4])))


def random_tree(part: str, depth: int, rng: np.random.Generator) -> sympy.Expr:
    if depth <= 0 or rng.random() < 0.3:
        return random_leaf(part, rng)
    if rng.random() < 0.5:
        op = UNARY[rng.integers(len(UNARY))]
        return op.build(random_tree(part, depth - 1, rng))
    op = BINARY[rng.integers(len(BINARY))]
    return op.build(random_tree(part, depth - 1, rng), random_tree(part, depth - 1, rng))


def _is_operator_node(e: sympy.Expr) -> bool:
    return bool(e.args) and not isinstance(e, PhiInv) and not e.is_Number


# -- variation operators -------------------------------------------------------------------------

def _pick_part(obj: Objective, rng: np.random.Generator) -> str:
    if obj.shape == "free":
        return "loss"
    parts = list(PART_WEIGHTS)
    w = np.array([PART_WEIGHTS[p] for p in parts])
    return parts[rng.choice(len(parts), p=w / w.sum())]


def _with_part(obj: Objective, part: str, expr: sympy.Expr, name: str) -> Objective:
    check_tree(expr, part)
    expr = parse(to_text(expr), part)  # exactly the tree its text gives (folds e.g. 1/2 built as a division)
    if expr.is_Number and part in ("phi_inv", "g", "loss", "psi"):
        raise GrammarError(f"{part} became a constant")
    return obj.replace(name=name, **{part: expr})


def _random_node(obj, rng):
    """(part, its expression, path of a uniformly drawn node, that node)."""
    part = _pick_part(obj, rng)
    expr = getattr(obj, part)
    paths = positions(expr)
    path = paths[rng.integers(len(paths))]
    return part, expr, path, node_at(expr, path)


def subtree_mutation(obj, rng, cfg, name):
    part, expr, path, _ = _random_node(obj, rng)
    return _with_part(obj, part, replace_at(expr, path, random_tree(part, cfg.max_depth_new, rng)), name)


def point_mutation(obj, rng, cfg, name):
    part, expr, path, node = _random_node(obj, rng)
    if _is_operator_node(node) and len(node.args) in (1, 2):
        pool = UNARY if len(node.args) == 1 else BINARY
        new = pool[rng.integers(len(pool))].build(*node.args)
    else:
        new = random_leaf(part, rng)
    return _with_part(obj, part, replace_at(expr, path, new), name)


def insertion(obj, rng, cfg, name):
    part, expr, path, node = _random_node(obj, rng)
    if rng.random() < 0.5:
        new = UNARY[rng.integers(len(UNARY))].build(node)
    else:
        op = BINARY[rng.integers(len(BINARY))]
        other = random_leaf(part, rng)
        new = op.build(node, other) if rng.random() < 0.5 else op.build(other, node)
    return _with_part(obj, part, replace_at(expr, path, new), name)


def deletion(obj, rng, cfg, name):
    part = _pick_part(obj, rng)
    expr = getattr(obj, part)
    inner = [p for p in positions(expr) if _is_operator_node(node_at(expr, p))]
    if not inner:
        raise GrammarError("nothing to delete")
    path = inner[rng.integers(len(inner))]
    node = node_at(expr, path)
    child = node.args[rng.integers(len(node.args))]
    return _with_part(obj, part, replace_at(expr, path, child), name)


def crossover(obj, rng, cfg, name, other: Objective):
    if obj.shape == "mpo" and other.shape == "mpo" and rng.random() < 0.5:
        part = MPO_PARTS[rng.integers(len(MPO_PARTS))]
        donor_constants = {k: v for k, v in other.constants.items() if k not in obj.constants}
        return obj.replace(name=name, constants=donor_constants, **{part: getattr(other, part)})
    part = _pick_part(obj, rng)
    donor_part = part if (other.shape == obj.shape) else ("loss" if other.shape == "free" else "g")
    donor = getattr(other, donor_part)
    if donor_part != part:
        raise GrammarError("parents of different shapes")
    expr = getattr(obj, part)
    sub = node_at(donor, positions(donor)[rng.integers(len(positions(donor)))])
    path = positions(expr)[rng.integers(len(positions(expr)))]
    return _with_part(obj, part, replace_at(expr, path, sub), name)


def perturb_constants(obj, rng, cfg, name):
    if not obj.constants:
        raise GrammarError("no constants to perturb")
    new = {}
    for k, v in obj.constants.items():
        low, high = obj.ranges.get(k, (CONSTANTS_BY_NAME[k].low, CONSTANTS_BY_NAME[k].high))
        if v > 0 and low >= 0:
            value = v * float(np.exp(cfg.constant_sigma * rng.standard_normal()))
        else:
            value = v + cfg.constant_sigma * max(abs(v), 0.1) * float(rng.standard_normal())
        new[k] = float(np.clip(value, low, high))
    return obj.replace(name=name, constants=new)


def simplify(obj, rng, cfg, name):
    """Replace a part by its expanded-and-refactored form when that is simpler."""
    part = _pick_part(obj, rng)
    expr = getattr(obj, part)
    simpler = sympy.factor_terms(sympy.expand(expr))
    if sympy.count_ops(simpler) >= sympy.count_ops(expr):
        raise GrammarError("already simple")
    return _with_part(obj, part, simpler, name)


OPERATORS_BY_NAME = {"subtree": subtree_mutation, "point": point_mutation, "insert": insertion,
                     "delete": deletion, "crossover": crossover, "constants": perturb_constants,
                     "simplify": simplify}


def vary(parents: list[Objective], rng: np.random.Generator, cfg: GPConfig, name: str) -> tuple[Objective, str, list[int]]:
    """One child from ``parents`` (tournament winners): (child, operator name, indices of parents used).

    Tries random operators until one yields a child inside the language and the size limit.
    """
    weights = np.array(cfg.operator_weights) / np.sum(cfg.operator_weights)
    last_error = "no operator succeeded"
    for _ in range(cfg.max_tries):
        op = OPERATOR_NAMES[rng.choice(len(OPERATOR_NAMES), p=weights)]
        i = int(rng.integers(len(parents)))
        try:
            if op == "crossover":
                j = int(rng.integers(len(parents)))
                child = crossover(parents[i], rng, cfg, name, parents[j])
                used = [i, j] if j != i else [i]
            else:
                child = OPERATORS_BY_NAME[op](parents[i], rng, cfg, name)
                used = [i]
            if complexity(child) > cfg.max_complexity:
                last_error = "too complex"
                continue
            return child, op, used
        except (GrammarError, ValueError, TypeError, RecursionError) as e:
            last_error = str(e)
    raise GrammarError(f"no valid child after {cfg.max_tries} tries ({last_error})")


def tournament(fitness: np.ndarray, k: int, n: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``n`` tournament winners (size ``k``) by fitness."""
    winners = []
    for _ in range(n):
        entrants = rng.choice(len(fitness), size=min(k, len(fitness)), replace=False)
        winners.append(int(entrants[np.argmax(fitness[entrants])]))
    return winners
