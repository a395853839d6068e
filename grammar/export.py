"""Export an objective as standalone code: PyTorch, JAX, LaTeX or a sympy script.

The PyTorch and JAX modules define

    loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, progress, *, <constant>=<value>, ...) -> per-pair losses

(TRL-style inputs: sequence log-likelihood sums; per-step means are computed inside as sum / max(len, 1);
progress is the training fraction t in [0, 1]).  They import only torch or jax and carry the protected
operators inline: the very functions in `grammar/ops_torch.py` / `grammar/ops_jax.py`, so the exported
loss computes what the kernel scored.  The sympy script builds the loss over the same seven inputs (per-step
means are defined in it as sum / max(len, 1)), each protected operator replaced by its exact definition in
plain sympy (exp, log, Max, Min, Piecewise), written in the overflow-free form the kernel computes
(softplus(x) = max(x, 0) + log(1 + e^-|x|), ...), so `lambdify` is finite wherever the kernel is.
Each header names the zoo loss the objective is, constants aside, when it is one (`grammar.identity.zoo_match`).
"""
from __future__ import annotations

import inspect
from typing import Literal

import sympy
from sympy.printing.str import StrPrinter

from grammar import ops_jax, ops_numpy
from grammar.identity import zoo_match
from grammar.language import (
    CONSTANT_NAMES, EXP_CLIP, POW_LIMIT, PROTECTED, SAFE_EPS, SYMBOLS, VARIABLES, PhiInv, ProtectedFunction,
    logsigmoid, sigmoid, softplus,
)
from grammar.objective import Objective

Format = Literal["torch", "jax", "latex", "sympy"]
TRL_ARGUMENTS = {
    "logp_w": "policy_chosen_logps", "logp_l": "policy_rejected_logps",
    "ref_w": "reference_chosen_logps", "ref_l": "reference_rejected_logps",
    "len_w": "chosen_lengths", "len_l": "rejected_lengths", "t": "progress",
}
_MEANS = {"mlogp_w": ("logp_w", "len_w"), "mlogp_l": ("logp_l", "len_l"),
          "mref_w": ("ref_w", "len_w"), "mref_l": ("ref_l", "len_l")}
_GUARDS = f"SAFE_EPS = {SAFE_EPS!r}\nEXP_CLIP = {EXP_CLIP!r}\nPOW_LIMIT = {POW_LIMIT!r}\nLN2 = {ops_numpy.LN2!r}\n"


class _Backend:
    def __init__(self, name: str, imports: str, module, preamble: str, abs_: str, tanh: str, minimum: str,
                 maximum: str, as_array: str, clamp_min: str, zeros: str, extra_helpers: dict):
        self.name, self.imports, self.module, self.preamble = name, imports, module, preamble
        self.zeros = zeros
        self.abs, self.tanh, self.minimum, self.maximum = abs_, tanh, minimum, maximum
        self.as_array, self.clamp_min, self.extra_helpers = as_array, clamp_min, extra_helpers


def _torch_backend() -> _Backend:
    from grammar import ops_torch

    return _Backend("torch", "import torch", ops_torch,
                    "dtype, device = policy_chosen_logps.dtype, policy_chosen_logps.device", "torch.abs", "torch.tanh", "minimum", "maximum",
                    "torch.as_tensor({x}, dtype=dtype, device=device)", "torch.clamp({x}, min=1.0)",
                    "torch.zeros_like(policy_chosen_logps)", {sympy.Min: "minimum", sympy.Max: "maximum"})


def _jax_backend() -> _Backend:
    return _Backend("jax", "import jax\nimport jax.numpy as jnp", ops_jax,
                    "dtype = jnp.asarray(policy_chosen_logps).dtype", "jnp.abs", "jnp.tanh", "jnp.minimum",
                    "jnp.maximum", "jnp.asarray({x}, dtype=dtype)", "jnp.maximum({x}, 1.0)",
                    "jnp.zeros_like(policy_chosen_logps, dtype=dtype)", {})


class _Emitter:
    """Python source for a language tree (after CSE), for one backend."""

    def __init__(self, backend: _Backend):
        self.b = backend

    def code(self, e: sympy.Expr) -> str:
        if e.is_Symbol:
            return e.name
        if e.is_Number or not e.free_symbols:
            return repr(float(e.evalf(30)))
        if e.is_Add:
            terms = sorted(e.args, key=_is_negative)
            text = self.code(terms[0]) if not _is_negative(terms[0]) else f"-{self.factor(-terms[0])}"
            for term in terms[1:]:
                text += f" - {self.code(-term)}" if _is_negative(term) else f" + {self.code(term)}"
            return text
        if e.is_Mul:
            coeff, factors = e.as_coeff_mul()
            text = " * ".join(self.factor(f) for f in factors)
            if coeff == -1:
                return f"-{text}" if len(factors) == 1 else f"-({text})"
            return text if coeff == 1 else f"{self.code(coeff)} * {text}"
        if e.is_Pow:
            return f"{self.factor(e.base)} ** {int(e.exp)}"
        if isinstance(e, (sympy.Min, sympy.Max)):
            fn = self.b.minimum if isinstance(e, sympy.Min) else self.b.maximum
            text = self.code(e.args[-1])
            for arg in reversed(e.args[:-1]):
                text = f"{fn}({self.code(arg)}, {text})"
            return text
        if isinstance(e, sympy.Abs):
            return f"{self.b.abs}({self.code(e.args[0])})"
        if isinstance(e, sympy.tanh):
            return f"{self.b.tanh}({self.code(e.args[0])})"
        if isinstance(e, ProtectedFunction):
            return f"{type(e).__name__}({', '.join(self.code(a) for a in e.args)})"
        raise TypeError(f"cannot export node {type(e).__name__}")

    def factor(self, e: sympy.Expr) -> str:
        text = self.code(e)
        needs_parens = e.is_Add or e.is_Mul or e.is_Pow or (e.is_Number and e.is_negative)
        return f"({text})" if needs_parens else text


def _is_negative(term: sympy.Expr) -> bool:
    return bool(term.as_coeff_Mul()[0].is_negative)


def _python_module(objective: Objective, backend: _Backend) -> str:
    expr = objective.loss_expr()
    used = {s.name for s in expr.free_symbols}
    variables = [n for n in VARIABLES if n in used]
    needed = set(variables) | {x for m in variables if m in _MEANS for x in _MEANS[m]}
    constants = [n for n in CONSTANT_NAMES if n in used]
    replacements, (reduced,) = sympy.cse(expr, symbols=sympy.numbered_symbols("_x"), order="none")
    emit = _Emitter(backend)

    helper_names = sorted({type(e).__name__ for e in sympy.preorder_traversal(expr)
                           if isinstance(e, ProtectedFunction)})
    helper_names += sorted({name for cls, name in backend.extra_helpers.items() if expr.has(cls)})
    helpers = "\n\n".join(inspect.getsource(getattr(backend.module, n)).strip() for n in helper_names)

    arguments = ", ".join(TRL_ARGUMENTS[n] for n in ("logp_w", "logp_l", "ref_w", "ref_l", "len_w", "len_l", "t"))
    keyword = ", *" + "".join(f", {n}={objective.constants[n]!r}" for n in constants) if constants else ""
    body = [backend.preamble]
    for n in ("logp_w", "logp_l", "ref_w", "ref_l", "t"):
        if n in needed:
            body.append(f"{n} = {backend.as_array.format(x=TRL_ARGUMENTS[n])}")
    for n in ("len_w", "len_l"):
        if n in needed:
            body.append(f"{n} = {backend.clamp_min.format(x=backend.as_array.format(x=TRL_ARGUMENTS[n]))}")
    for n in variables:
        if n in _MEANS:
            body.append(f"{n} = {_MEANS[n][0]} / {_MEANS[n][1]}")
    for n in constants:
        body.append(f"{n} = {backend.as_array.format(x=n)}")
    body += [f"{symbol} = {emit.code(sub)}" for symbol, sub in replacements]
    result = emit.code(reduced)
    if not set(VARIABLES) & used:  # a constant loss still returns one value per pair
        result = f"{result} + {backend.zeros}"
    body.append(f"return {result}")

    text = objective.to_dict()["parts"]
    formula = "\n".join(f"    {k} = {v}" for k, v in text.items())
    structure = _structure_note(objective)
    doc = (f'"""Objective {objective.name!r} ({objective.shape} form), exported by MPO Discover.\n\n'
           f"{formula}\n\n" + (f"{structure}\n\n" if structure else "")
           + f"Standalone: needs only {backend.name}.  Guards: {_guard_text(helper_names)}\n"
           f'"""')
    return (f"{doc}\n{backend.imports}\n\n{_GUARDS}\nCONSTANTS = {dict(objective.constants)!r}\n\n\n"
            f"{helpers}\n\n\n"
            f"def loss({arguments}{keyword}):\n"
            f'    """Per-pair loss.  Log-likelihoods are sums over steps; lengths are step counts."""\n'
            + "".join(f"    {line}\n" for line in body))


def _structure_note(objective: Objective) -> str | None:
    """A header line naming the zoo loss the objective is, constants aside (`grammar.identity.zoo_match`)."""
    match = zoo_match(objective)
    return f"Structure: the zoo loss {match.describe()} (same canonical form, constants aside)." if match else None


def _guard_text(helper_names: list[str]) -> str:
    domains = [f"{cls.grammar_name}: {cls.domain}" for cls in PROTECTED if cls.__name__ in helper_names]
    return "; ".join(domains) if domains else "none needed."


def export_torch(objective: Objective) -> str:
    """Source of a standalone PyTorch module with `loss(...)` (see the module docstring)."""
    return _python_module(objective, _torch_backend())


def export_jax(objective: Objective) -> str:
    """Source of a standalone JAX module with `loss(...)` (see the module docstring)."""
    return _python_module(objective, _jax_backend())


def _latex_names() -> dict[sympy.Symbol, str]:
    names = {}
    for side, y in (("", "y"), ("_w", "y_w"), ("_l", "y_l")):
        names.update({
            f"logp{side}": rf"\log\pi_\theta({y})", f"ref{side}": rf"\log\pi_{{\mathrm{{ref}}}}({y})",
            f"mlogp{side}": rf"\overline{{\log\pi_\theta}}({y})",
            f"mref{side}": rf"\overline{{\log\pi_{{\mathrm{{ref}}}}}}({y})", f"len{side}": rf"|{y}|",
        })
    names.update({"eps": r"\epsilon", "lam": r"\lambda", **{f"c{i}": f"c_{{{i}}}" for i in range(10)}})
    return {SYMBOLS[k]: v for k, v in names.items()}


def _latex(e: sympy.Expr) -> str:
    e = e.replace(PhiInv, sympy.Function(r"\phi^{-1}"))
    return sympy.latex(e, symbol_names=_latex_names())


def export_latex(objective: Objective) -> str:
    """LaTeX (an `aligned` block) of the parts and of the whole loss, with constants and guards."""
    rows = []
    if objective.shape == "mpo":
        rows += [rf"\phi^{{-1}}(u) &= {_latex(objective.phi_inv)}", rf"\psi(y) &= {_latex(objective.psi)}",
                 rf"g(z) &= {_latex(objective.g)}", rf"w(t) &= {_latex(objective.imitation)}",
                 r"\mathcal{L} &= g\big(\psi(y_w) - \psi(y_l)\big) + w(t)\,"
                 r"\big(-\overline{\log\pi_\theta}(y_w)\big)",
                 rf"&= {_latex(objective.loss_expr())}"]
    else:
        rows.append(rf"\mathcal{{L}} &= {_latex(objective.loss_expr())}")
    if objective.constants:
        rows.append(r"&\text{with } " + ",\\ ".join(
            f"{_latex(SYMBOLS[k])} = {v:g}" for k, v in objective.constants.items()))
    used = {type(e) for e in sympy.preorder_traversal(objective.loss_expr())}
    notes = [f"% {cls.grammar_name}: {cls.domain}" for cls in PROTECTED if cls in used]
    structure = _structure_note(objective)
    header = [f"% {objective.name}: exported by MPO Discover", *([f"% {structure}"] if structure else []), *notes]
    return "\n".join([*header, r"\begin{aligned}", " \\\\\n".join(rows), r"\end{aligned}"]) + "\n"


def _softplus_stable(x):
    return sympy.Max(x, 0) + sympy.log(1 + sympy.exp(-sympy.Abs(x)))


# Definitions equal to `ProtectedFunction.definition` but without exp overflow (e^5000 is inf in float64).
_STABLE = {
    softplus: _softplus_stable,
    logsigmoid: lambda x: -_softplus_stable(-x),
    sigmoid: lambda x: sympy.exp(sympy.Min(x, 0)) / (1 + sympy.exp(-sympy.Abs(x))),
}


def _plain_sympy(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(lambda e: isinstance(e, ProtectedFunction),
                        lambda e: _STABLE.get(type(e), type(e).definition)(*e.args))


def export_sympy(objective: Objective) -> str:
    """Source of a script that builds the loss in plain sympy (`loss`, `CONSTANTS`, `SYMBOLS`)."""
    expr = _plain_sympy(objective.loss_expr())
    used = {s.name for s in expr.free_symbols}
    means = [n for n in _MEANS if n in used]
    inputs = {n for n in used if n in VARIABLES and n not in _MEANS} | {x for m in means for x in _MEANS[m]}
    symbols = [n for n in VARIABLES if n in inputs] + [n for n in CONSTANT_NAMES if n in used]
    structure = _structure_note(objective)
    lines = [f'"""Objective {objective.name!r}, exported by MPO Discover: the loss in plain sympy.',
             "", "Inputs are sequence log-likelihood sums, lengths and progress t (as the trainer's); protected",
             "operators appear through their exact definitions; evaluate with",
             "`sympy.lambdify(list(SYMBOLS.values()), loss)` or `loss.subs(...).evalf()`.",
             *(["", structure] if structure else []),
             '"""', "import sympy", "from sympy import E, Abs, Max, Min, Piecewise, S, exp, log, sqrt, tanh", ""]
    for name in symbols:
        assumption = "positive=True" if SYMBOLS[name].is_positive else "real=True"
        lines.append(f"{name} = sympy.Symbol({name!r}, {assumption})")
    for name in means:
        total, length = _MEANS[name]
        lines.append(f"{name} = {total} / Max({length}, 1)  # per-step mean")
    lines.append("SYMBOLS = {" + ", ".join(f"{n!r}: {n}" for n in symbols) + "}")
    lines.append(f"CONSTANTS = {dict(objective.constants)!r}")
    lines.append(f"loss = {StrPrinter({'sympy_integers': True}).doprint(expr)}")
    return "\n".join(lines) + "\n"


def export(objective: Objective, fmt: Format) -> str:
    """Dispatch on `fmt` in {"torch", "jax", "latex", "sympy"}."""
    exporters = {"torch": export_torch, "jax": export_jax, "latex": export_latex, "sympy": export_sympy}
    if fmt not in exporters:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(exporters)}")
    return exporters[fmt](objective)


__all__ = ["export", "export_torch", "export_jax", "export_latex", "export_sympy", "TRL_ARGUMENTS"]
