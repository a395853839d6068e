"""Hypothesis strategies for language trees (test helper; needs `hypothesis`).

Trees are built with the same `OPERATORS` builders the parser uses, so they are exactly the trees text
can produce.
"""
from __future__ import annotations

import sympy

from grammar.language import OPERATORS, PART_NAMES, SYMBOLS

UNARY = ("neg", "square", "sqrt", "exp", "log", "log1p", "log1mexp", "logsigmoid", "softplus", "sigmoid",
         "relu", "tanh", "abs")
BINARY = ("+", "-", "*", "/", "min", "max")
EXPONENTS = tuple(sympy.Rational(k) for k in ("-2", "-1/2", "1/2", "3/2", "2", "3"))
LITERALS = tuple(sympy.Rational(k) for k in ("-3", "-1", "-1/2", "1/4", "1", "2", "5"))
CONSTANTS = ("beta", "eps", "c0")


def _binary(name: str, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if name == "/" and b == 0:
        return a
    return OPERATORS[name].build(a, b)


def expressions(part: str = "loss", max_leaves: int = 10):
    """Random trees over the names allowed in `part`, a few constants and small literals."""
    import hypothesis.strategies as st

    symbols = [SYMBOLS[n] for n in (*PART_NAMES[part], *CONSTANTS)]
    leaves = st.one_of(st.sampled_from(symbols), st.sampled_from(symbols), st.sampled_from(LITERALS))

    def extend(children):
        return st.one_of(
            st.builds(lambda name, x: OPERATORS[name].build(x), st.sampled_from(UNARY), children),
            st.builds(_binary, st.sampled_from(BINARY), children, children),
            st.builds(lambda x, k: OPERATORS["pow"].build(x, k), children, st.sampled_from(EXPONENTS)),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)
