"""The MPO expression language: variables, constants, operators and the `Objective`.

An objective is a per-pair loss

    L = g(psi_w - psi_l) + w(t) * (-mlogp_w),      psi = beta * [phi_inv(logp) - phi_inv(ref)]   (default)

written in *log space*: for continuous actions pi(y) is a density, so every variable is a log-likelihood
(a sequence sum or a per-step mean), never a probability.  Expressions are sympy trees over a whitelist:

* variables (`VARIABLES`), side-agnostic names for psi (`SIDE_NAMES`), the placeholders `u` (argument of
  phi_inv) and `z` (the margin, argument of g), and named free constants (`CONSTANTS`, one kernel slot each);
* sympy's own safe nodes: Add, Mul, Pow with a positive integer exponent, Abs, tanh, Min, Max;
* protected functions (subclasses of `ProtectedFunction` below), each finite with a finite derivative on
  every finite input.  Their guards are the module constants `SAFE_EPS`, `EXP_CLIP`, `POW_LIMIT`.

`OPERATORS` is the one table of what can be written in text; `ProtectedFunction.definition` is the one
statement of what each protected function computes (the numpy/JAX/torch implementations in
`grammar/ops_*.py` are tested against it).
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import sympy
from mpmath.libmp import prec_to_dps
from sympy.printing.precedence import PRECEDENCE

# --------------------------------------------------------------------------------------------- guards
SAFE_EPS = 1e-6  # |denominator|, |log argument|, distance of log1mexp's argument from 0
EXP_CLIP = 50.0  # exp(x) is exp(clip(x, -EXP_CLIP, EXP_CLIP)); e^50 ~ 5e21 is finite in float32
POW_LIMIT = 4.0  # bounded powers: exponents are constants in [-POW_LIMIT, POW_LIMIT]
MAX_LITERAL = 1e6  # largest |numeric literal| accepted by the parser

_EPS = sympy.Rational(1, 10**6)
assert float(_EPS) == SAFE_EPS


class GrammarError(ValueError):
    """A text or tree outside the language.  `reason` says what, `position` (0-based column) says where."""

    def __init__(self, reason: str, position: int | None = None, text: str | None = None):
        self.reason = reason
        self.position = position
        message = reason
        if position is not None:
            message += f" (at column {position + 1})"
            if text is not None and len(text) <= 200:
                message += f"\n  {text}\n  {' ' * position}^"
        super().__init__(message)


# ------------------------------------------------------------------------------------------ variables
VARIABLES: tuple[str, ...] = (
    "logp_w", "logp_l", "ref_w", "ref_l", "mlogp_w", "mlogp_l", "mref_w", "mref_l", "len_w", "len_l", "t",
)
VARIABLE_DOCS: Mapping[str, str] = types.MappingProxyType({
    "logp_w": "log pi_theta(y_w): policy log-likelihood of the chosen segment, summed over steps",
    "logp_l": "log pi_theta(y_l): policy log-likelihood of the rejected segment, summed over steps",
    "ref_w": "log pi_ref(y_w): reference log-likelihood of the chosen segment, summed over steps",
    "ref_l": "log pi_ref(y_l): reference log-likelihood of the rejected segment, summed over steps",
    "mlogp_w": "logp_w / len_w: per-step mean", "mlogp_l": "logp_l / len_l: per-step mean",
    "mref_w": "ref_w / len_w: per-step mean", "mref_l": "ref_l / len_l: per-step mean",
    "len_w": "number of steps of y_w (>= 1)", "len_l": "number of steps of y_l (>= 1)",
    "t": "training progress in [0, 1]",
})
SIDE_NAMES: tuple[str, ...] = ("logp", "ref", "mlogp", "mref", "len")  # psi's names, instantiated as _w / _l
PLACEHOLDERS: tuple[str, ...] = ("u", "z")  # u: argument of phi_inv (a log-likelihood); z: the margin


@dataclass(frozen=True)
class Constant:
    name: str
    default: float
    low: float
    high: float
    doc: str


# The order is the kernel's constant-slot order (`grammar.kernel.constant_vector`).
CONSTANTS: tuple[Constant, ...] = (
    Constant("beta", 0.1, 1e-3, 10.0, "inverse temperature / scale of the implicit reward"),
    Constant("eps", 0.1, 0.0, 0.49, "label-smoothing / assumed label-noise rate"),
    Constant("gamma", 0.5, 0.0, 10.0, "target margin (SimPO)"),
    Constant("tau", 0.05, 1e-3, 10.0, "temperature of a soft switch (DiscoPOP)"),
    Constant("lam", 0.1, 0.0, 10.0, "weight of an auxiliary term (ORPO lambda, CPO alpha)"),
    Constant("delta", 0.0, -10.0, 10.0, "reward shift (BCO)"),
    *(Constant(f"c{i}", 1.0, -10.0, 10.0, "free constant") for i in range(10)),
)
CONSTANT_NAMES: tuple[str, ...] = tuple(c.name for c in CONSTANTS)
CONSTANTS_BY_NAME: Mapping[str, Constant] = types.MappingProxyType({c.name: c for c in CONSTANTS})


def _make_symbol(name: str) -> sympy.Symbol:
    if name.startswith("len"):
        return sympy.Symbol(name, positive=True)
    return sympy.Symbol(name, real=True)


SYMBOLS: Mapping[str, sympy.Symbol] = types.MappingProxyType(
    {n: _make_symbol(n) for n in (*VARIABLES, *SIDE_NAMES, *PLACEHOLDERS, *CONSTANT_NAMES)}
)
CONSTANT_SYMBOLS = frozenset(SYMBOLS[n] for n in CONSTANT_NAMES)
U, Z, T = SYMBOLS["u"], SYMBOLS["z"], SYMBOLS["t"]
PhiInv = sympy.Function("phi_inv")  # stands for phi_inv inside psi until the objective is expanded

# Names each part of an objective may use besides the constants.
PART_NAMES: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "phi_inv": ("u", "t"),
    "psi": (*SIDE_NAMES, "t"),
    "g": ("z", "t"),
    "imitation": ("t",),
    "loss": VARIABLES,
})


# --------------------------------------------------------------------------------- protected functions
class ProtectedFunction(sympy.Function):
    """A function with a guard that keeps it, and its derivative, finite on every finite input.

    Subclasses are named after their implementation in `grammar/ops_{numpy,jax,torch}.py`.
    """

    grammar_name: ClassVar[str]  # how it is written in text
    cost: ClassVar[float]
    latex_format: ClassVar[str]  # str.format template over the printed arguments
    domain: ClassVar[str]  # the guard, in words

    @classmethod
    def definition(cls, *args: sympy.Expr) -> sympy.Expr:
        """The exact mathematical definition (guards included) in plain sympy."""
        raise NotImplementedError

    def _eval_is_extended_real(self):
        return True if all(a.is_extended_real for a in self.args) else None

    def _eval_evalf(self, prec):
        if not all(a.is_number for a in self.args):
            return None
        return self.definition(*self.args).evalf(prec_to_dps(prec))

    def _sympystr(self, printer) -> str:
        return f"{self.grammar_name}({', '.join(printer._print(a) for a in self.args)})"

    def _latex(self, printer) -> str:
        return self.latex_format.format(*(printer._print(a) for a in self.args))


class safe_exp(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "exp", 2.0, f"argument clipped to [-{EXP_CLIP:g}, {EXP_CLIP:g}]"
    latex_format = r"e^{{{0}}}"

    @classmethod
    def definition(cls, x):
        return sympy.exp(sympy.Min(sympy.Max(x, -int(EXP_CLIP)), int(EXP_CLIP)))


class safe_log(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "log", 2.0, f"log(max(|x|, {SAFE_EPS:g})): exact for x > 0, even in x"
    latex_format = r"\log\left|{0}\right|"

    @classmethod
    def definition(cls, x):
        return sympy.log(sympy.Max(sympy.Abs(x), _EPS))


class safe_log1p(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "log1p", 2.0, f"log1p(max(x, -1 + {SAFE_EPS:g}))"
    latex_format = r"\log\left(1 + {0}\right)"

    @classmethod
    def definition(cls, x):
        return sympy.log(1 + sympy.Max(x, -1 + _EPS))


class log1mexp(ProtectedFunction):
    nargs = 1
    grammar_name, cost = "log1mexp", 3.0
    domain = f"log(1 - e^x) for x <= -{SAFE_EPS:g}; the argument is clipped to <= -{SAFE_EPS:g}"
    latex_format = r"\log\left(1 - e^{{{0}}}\right)"

    @classmethod
    def definition(cls, x):
        return sympy.log(1 - sympy.exp(sympy.Min(x, -_EPS)))


class logsigmoid(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "logsigmoid", 2.0, "all reals (computed as -softplus(-x))"
    latex_format = r"\log\sigma\left({0}\right)"

    @classmethod
    def definition(cls, x):
        return -sympy.log(1 + sympy.exp(-x))


class softplus(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "softplus", 2.0, "all reals (computed as logaddexp(0, x))"
    latex_format = r"\operatorname{{softplus}}\left({0}\right)"

    @classmethod
    def definition(cls, x):
        return sympy.log(1 + sympy.exp(x))


class sigmoid(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "sigmoid", 2.0, "all reals"
    latex_format = r"\sigma\left({0}\right)"

    @classmethod
    def definition(cls, x):
        return 1 / (1 + sympy.exp(-x))


class relu(ProtectedFunction):
    nargs = 1
    grammar_name, cost, domain = "relu", 1.0, "all reals"
    latex_format = r"\left[{0}\right]_+"

    @classmethod
    def definition(cls, x):
        return sympy.Max(x, 0)


class safe_div(ProtectedFunction):
    nargs = 2
    grammar_name, cost = "/", 2.0
    domain = f"a / b with b replaced by +-{SAFE_EPS:g} (sign of b, + at 0) where |b| <= {SAFE_EPS:g}"
    latex_format = r"\frac{{{0}}}{{{1}}}"
    precedence = PRECEDENCE["Mul"]  # printed as a/b: parents parenthesise it like a product

    @classmethod
    def definition(cls, a, b):
        return a / sympy.Piecewise((b, sympy.Abs(b) > _EPS), (_EPS, b >= 0), (-_EPS, True))

    def _sympystr(self, printer) -> str:
        a, b = self.args
        return f"{printer.parenthesize(a, self.precedence, strict=True)}/{printer.parenthesize(b, self.precedence)}"


class safe_pow(ProtectedFunction):
    nargs = 2
    grammar_name, cost = "pow", 3.0
    domain = f"max(|x|, {SAFE_EPS:g}) ** clip(k, -{POW_LIMIT:g}, {POW_LIMIT:g}): a power of the magnitude"
    latex_format = r"\left|{0}\right|^{{{1}}}"

    @classmethod
    def definition(cls, x, k):
        return sympy.Max(sympy.Abs(x), _EPS) ** sympy.Min(sympy.Max(k, -int(POW_LIMIT)), int(POW_LIMIT))


PROTECTED: tuple[type[ProtectedFunction], ...] = (
    safe_exp, safe_log, safe_log1p, log1mexp, logsigmoid, softplus, sigmoid, relu, safe_div, safe_pow,
)


def to_plain_sympy(expr: sympy.Expr) -> sympy.Expr:
    """Replace every protected function by its mathematical definition (for mpmath-exact reference values)."""
    return expr.replace(lambda e: isinstance(e, ProtectedFunction), lambda e: e.definition(*e.args))


# ------------------------------------------------------------------------------------- text operators
def _power(base: sympy.Expr, k: sympy.Expr) -> sympy.Expr:
    if k in CONSTANT_SYMBOLS:
        return safe_pow(base, k)
    if not k.is_Number:
        raise GrammarError("an exponent must be a numeric literal or a named constant")
    if abs(float(k)) > POW_LIMIT:
        raise GrammarError(f"exponent {k} is outside [-{POW_LIMIT:g}, {POW_LIMIT:g}]")
    if k.is_Integer and k > 0:
        return base**k
    if k == 0:
        return sympy.Integer(1)
    return safe_pow(base, k)


def _divide(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if b.is_Number:
        if b == 0:
            raise GrammarError("division by the literal 0")
        return a / b
    return safe_div(a, b)


@dataclass(frozen=True)
class Operator:
    name: str  # as written in text
    arity: int
    build: Callable[..., sympy.Expr]
    domain: str


OPERATORS: Mapping[str, Operator] = types.MappingProxyType({op.name: op for op in (
    Operator("+", 2, lambda a, b: a + b, "all reals"),
    Operator("-", 2, lambda a, b: a - b, "all reals"),
    Operator("neg", 1, lambda a: -a, "all reals (unary minus)"),
    Operator("*", 2, lambda a, b: a * b, "all reals"),
    Operator("/", 2, _divide, safe_div.domain + "; division by a nonzero literal is exact"),
    Operator("**", 2, _power, "positive integer exponents are exact; others as pow"),
    Operator("pow", 2, _power, safe_pow.domain + "; positive integer exponents are exact"),
    Operator("square", 1, lambda x: x**2, "all reals"),
    Operator("sqrt", 1, lambda x: safe_pow(x, sympy.Rational(1, 2)), "sqrt(max(|x|, eps))"),
    Operator("exp", 1, safe_exp, safe_exp.domain),
    Operator("log", 1, safe_log, safe_log.domain),
    Operator("log1p", 1, safe_log1p, safe_log1p.domain),
    Operator("log1mexp", 1, log1mexp, log1mexp.domain),
    Operator("logsigmoid", 1, logsigmoid, logsigmoid.domain),
    Operator("softplus", 1, softplus, softplus.domain),
    Operator("sigmoid", 1, sigmoid, sigmoid.domain),
    Operator("relu", 1, relu, relu.domain),
    Operator("tanh", 1, sympy.tanh, "all reals"),
    Operator("abs", 1, sympy.Abs, "all reals"),
    Operator("min", 2, sympy.Min, "all reals"),
    Operator("max", 2, sympy.Max, "all reals"),
)})
FUNCTION_NAMES = frozenset(n for n in OPERATORS if n.isidentifier() and n != "neg")

# Cost of one node in `grammar.canonical.complexity` (n-ary Add/Mul/Min/Max count n - 1 times).
NODE_COST: Mapping[type, float] = types.MappingProxyType({
    sympy.Add: 1.0, sympy.Mul: 1.0, sympy.Pow: 2.0, sympy.Abs: 1.0, sympy.tanh: 2.0, sympy.Min: 1.0,
    sympy.Max: 1.0, **{cls: cls.cost for cls in PROTECTED},
})
LEAF_COST = 1.0
MAX_INTEGER_POWER = 64  # x**k with integer k: products of bounded powers stay exact


def check_tree(expr: sympy.Expr, part: str = "loss") -> None:
    """Raise GrammarError unless `expr` only uses language nodes and the names allowed in `part`."""
    names = PART_NAMES[part]
    allowed = {SYMBOLS[n] for n in names} | CONSTANT_SYMBOLS
    for node in sympy.preorder_traversal(expr):
        if node.is_Symbol:
            if node not in allowed:
                raise GrammarError(f"{part}: symbol {node} is not allowed here (allowed: "
                                   f"{', '.join(names)} and the named constants)")
        elif node.is_Number:
            if not (node.is_Rational or node.is_Float) or not node.is_finite:
                raise GrammarError(f"{part}: number {node} is not a finite real")
        elif node.is_Pow:
            if not (node.exp.is_Integer and 0 < node.exp <= MAX_INTEGER_POWER):
                raise GrammarError(f"{part}: power {node} needs an integer exponent in "
                                   f"[1, {MAX_INTEGER_POWER}]; use pow() or '/'")
        elif isinstance(node, PhiInv):
            if part != "psi" or len(node.args) != 1:
                raise GrammarError(f"{part}: phi_inv(x) may only appear in psi, with one argument")
        elif type(node) not in NODE_COST:
            raise GrammarError(f"{part}: {type(node).__name__} is not in the language")
