"""Safe text -> sympy parsing, and sympy -> text printing (the inverse).

Text is parsed with `ast.parse(mode="eval")` and the syntax tree is walked against a whitelist; nothing is
ever evaluated (no eval/exec/sympify).  Every rejection is a `GrammarError` naming what was wrong and the
column where it is.
"""
from __future__ import annotations

import ast
import math

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from grammar.language import (
    CONSTANT_NAMES, FUNCTION_NAMES, MAX_LITERAL, OPERATORS, PART_NAMES, POW_LIMIT, SYMBOLS, GrammarError,
    PhiInv,
)

MAX_TEXT_CHARS = 2000
MAX_NODES = 200
MAX_DEPTH = 30

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_BINARY_HINTS = {ast.BitXor: "'^' is not a power here; write x**k", ast.FloorDiv: "use '/'",
                 ast.Mod: "'%' is not in the language", ast.MatMult: "'@' is not in the language"}


def parse(text: str, part: str = "loss") -> sympy.Expr:
    """Parse `text` as the objective part `part` ("phi_inv", "psi", "g", "imitation" or "loss").

    The part decides which variables may appear (`grammar.language.PART_NAMES`); named constants may
    appear everywhere, `phi_inv(...)` only in psi.
    """
    if part not in PART_NAMES:
        raise GrammarError(f"unknown part {part!r}; parts are {', '.join(PART_NAMES)}")
    if not isinstance(text, str):
        raise GrammarError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise GrammarError(f"text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}",
                           MAX_TEXT_CHARS)
    flat = text.replace("\r", " ").replace("\n", " ")  # same length: columns stay true
    if not flat.strip():
        raise GrammarError("empty expression", 0)
    try:
        tree = ast.parse(flat, mode="eval")
    except SyntaxError as e:  # an unexpected end of the text comes with offset 0: point at the end
        column = e.offset - 1 if e.offset else len(flat.rstrip())
        raise GrammarError(f"syntax error: {e.msg}", min(max(column, 0), len(flat)), flat) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise GrammarError(f"cannot parse: {type(e).__name__}", 0, flat) from None
    return _Walker(flat, part).expr(tree.body, 1)


class _Walker:
    def __init__(self, text: str, part: str):
        self.text = text
        self.part = part
        self.names = set(PART_NAMES[part]) | set(CONSTANT_NAMES)
        self.nodes = 0

    def fail(self, reason: str, node: ast.AST) -> GrammarError:
        return GrammarError(reason, getattr(node, "col_offset", 0), self.text)

    def expr(self, node: ast.AST, depth: int) -> sympy.Expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"expression has more than {MAX_NODES} nodes", node)
        if depth > MAX_DEPTH:
            raise self.fail(f"expression is nested deeper than {MAX_DEPTH}", node)
        try:
            return self._expr(node, depth)
        except GrammarError as e:
            if e.position is None:  # raised by an operator's builder: locate it here
                raise self.fail(e.reason, node) from None
            raise

    def _expr(self, node: ast.AST, depth: int) -> sympy.Expr:
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                hint = _BINARY_HINTS.get(type(node.op), "")
                raise self.fail(f"operator {type(node.op).__name__} is not allowed" + (f": {hint}" if hint else ""),
                                node)
            left = self.expr(node.left, depth + 1)
            right = self.expr(node.right, depth + 1)
            if op == "**":
                try:
                    return OPERATORS[op].build(left, right)
                except GrammarError as e:
                    raise self.fail(e.reason, node.right) from None
            return OPERATORS[op].build(left, right)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return OPERATORS["neg"].build(self.expr(node.operand, depth + 1))
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand, depth + 1)
            raise self.fail(f"unary operator {type(node.op).__name__} is not allowed", node)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return SYMBOLS[node.id]
            if node.id in FUNCTION_NAMES or node.id == "phi_inv":
                raise self.fail(f"{node.id} is a function: call it as {node.id}(...)", node)
            raise self.fail(f"unknown name {node.id!r} in {self.part}; allowed: "
                            f"{', '.join(PART_NAMES[self.part])} and the constants "
                            f"{', '.join(CONSTANT_NAMES)}", node)
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Attribute):
            raise self.fail("attribute access is not allowed", node)
        if isinstance(node, ast.Subscript):
            raise self.fail("subscripts are not allowed", node)
        if isinstance(node, ast.Lambda):
            raise self.fail("lambda is not allowed", node)
        if isinstance(node, ast.Compare):
            raise self.fail("comparisons are not allowed (use min/max/relu)", node)
        raise self.fail(f"{type(node).__name__} is not allowed in an expression", node)

    def number(self, node: ast.Constant) -> sympy.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"literal {value!r} is not a real number", node)
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise self.fail(f"literal {value!r} is outside [-{MAX_LITERAL:g}, {MAX_LITERAL:g}]", node)
        return sympy.Integer(value) if isinstance(value, int) else sympy.Rational(repr(value))

    def call(self, node: ast.Call, depth: int) -> sympy.Expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail("only plain function names can be called (no attributes or expressions)", node)
        name = node.func.id
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed in {name}(...)", node.keywords[0].value)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(f"*arguments are not allowed in {name}(...)", arg)
        if name == "phi_inv":
            if self.part != "psi":
                raise self.fail("phi_inv(...) may only be used in psi", node)
            arity, build = 1, PhiInv
        elif name in FUNCTION_NAMES:
            arity, build = OPERATORS[name].arity, OPERATORS[name].build
        else:
            raise self.fail(f"unknown function {name!r}; allowed: {', '.join(sorted(FUNCTION_NAMES))}",
                            node.func)
        if len(node.args) != arity:
            raise self.fail(f"{name} takes {arity} argument{'s' if arity > 1 else ''}, "
                            f"got {len(node.args)}", node)
        args = [self.expr(a, depth + 1) for a in node.args]
        try:
            return build(*args)
        except GrammarError as e:
            raise self.fail(e.reason, node.args[-1]) from None


class GrammarPrinter(StrPrinter):
    """Prints language trees as text that `parse` reads back to the same tree."""

    def _print_Min(self, expr):
        return self._nested("min", expr.args)

    def _print_Max(self, expr):
        return self._nested("max", expr.args)

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _nested(self, name: str, args) -> str:
        text = self._print(args[-1])
        for a in reversed(args[:-1]):
            text = f"{name}({self._print(a)}, {text})"
        return text

    def _print_Mul(self, expr):
        # The coefficient goes last, and a sign before a leading sum wraps the product: "2*(x + y)" or
        # "-(x + y)*z" would read back with the number distributed over the sum.
        coeff, factors = expr.as_coeff_mul()
        text = "*".join(self.parenthesize(f, PRECEDENCE["Mul"], strict=False) for f in factors)
        magnitude = abs(coeff)
        if magnitude != 1:
            if magnitude.is_Rational and magnitude.p == 1:
                text = f"{text}/{magnitude.q}"
            else:
                text = f"{text}*{self._print(magnitude)}"
        if coeff.is_negative:
            return f"-({text})" if factors[0].is_Add else f"-{text}"
        return text

    def _print_Pow(self, expr):
        n = int(expr.exp)  # language trees only hold positive integer powers
        if n <= POW_LIMIT:
            return super()._print_Pow(expr)
        base = self.parenthesize(expr.base, PRECEDENCE["Pow"], strict=False)
        chunks = [int(POW_LIMIT)] * (n // int(POW_LIMIT)) + ([n % int(POW_LIMIT)] if n % int(POW_LIMIT) else [])
        return "(" + "*".join(f"{base}**{k}" for k in chunks) + ")"  # x**6 -> (x**4*x**2)

    def _print_Float(self, expr):
        return repr(float(expr))


def to_text(expr: sympy.Expr) -> str:
    """Grammar text for a language tree; `parse(to_text(e), part) == e`."""
    return GrammarPrinter().doprint(expr)


__all__ = ["parse", "to_text", "GrammarError", "MAX_TEXT_CHARS", "MAX_NODES", "MAX_DEPTH"]
