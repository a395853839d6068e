"""`Objective`: a named preference-optimisation loss in one of two shapes, with its constants."""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Mapping

import sympy

from grammar.language import (
    CONSTANT_NAMES, CONSTANTS_BY_NAME, SIDE_NAMES, SYMBOLS, U, Z, GrammarError, PhiInv, check_tree,
)
from grammar.parser import parse, to_text

DEFAULT_PSI = "beta*(phi_inv(logp) - phi_inv(ref))"
MPO_PARTS = ("phi_inv", "psi", "g", "imitation")
Shape = Literal["mpo", "free"]


@dataclass(frozen=True)
class Objective:
    """A preference-optimisation objective: a per-pair loss.

    shape "mpo":  L = g(psi_w - psi_l) + imitation * (-mlogp_w)
        phi_inv(u)  over u (a log-likelihood) and t; must be increasing in u.
        psi         over one side's `logp, ref, mlogp, mref, len` and t; may call `phi_inv(...)`;
                    instantiated for y_w and y_l.  Default beta*(phi_inv(logp) - phi_inv(ref)).
        g(z)        over the margin z and t; non-increasing in z when `monotone`.
        imitation   a weight over t; it multiplies the SFT term -mlogp_w, the per-step MEAN negative
                    log-likelihood of y_w (so the weight does not scale with segment length).
    shape "free": L = loss, an expression over all `grammar.language.VARIABLES`.

    `monotone` declares that the loss must not increase when logp_w rises or logp_l falls (DPO-like).
    Published losses that pull the margin towards a target (IPO, cDPO, EXO, ...) set it False.
    `constants` holds a value for every named constant the expressions use (defaults filled in, unused
    ones dropped) and `ranges` the interval an optimiser may move each one within.
    """

    name: str
    shape: Shape
    phi_inv: sympy.Expr | None = None
    psi: sympy.Expr | None = None
    g: sympy.Expr | None = None
    imitation: sympy.Expr | None = None
    loss: sympy.Expr | None = None
    constants: Mapping[str, float] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    monotone: bool = True

    @classmethod
    def mpo(cls, name: str, *, phi_inv: str | sympy.Expr = "u", psi: str | sympy.Expr = DEFAULT_PSI,
            g: str | sympy.Expr = "softplus(-z)", imitation: str | sympy.Expr = "0",
            constants: Mapping[str, float] | None = None,
            ranges: Mapping[str, tuple[float, float]] | None = None, monotone: bool = True) -> Objective:
        parts = {"phi_inv": phi_inv, "psi": psi, "g": g, "imitation": imitation}
        return cls(name, "mpo", **{k: _as_expr(v, k) for k, v in parts.items()},
                   constants=constants or {}, ranges=ranges or {}, monotone=monotone)

    @classmethod
    def free(cls, name: str, loss: str | sympy.Expr, *, constants: Mapping[str, float] | None = None,
             ranges: Mapping[str, tuple[float, float]] | None = None, monotone: bool = True) -> Objective:
        return cls(name, "free", loss=_as_expr(loss, "loss"), constants=constants or {},
                   ranges=ranges or {}, monotone=monotone)

    def __post_init__(self):
        if self.shape not in ("mpo", "free"):
            raise GrammarError(f"unknown objective shape {self.shape!r} (use 'mpo' or 'free')")
        expected = MPO_PARTS if self.shape == "mpo" else ("loss",)
        given = tuple(k for k in (*MPO_PARTS, "loss") if getattr(self, k) is not None)
        if given != expected:
            raise GrammarError(f"a {self.shape!r} objective has parts {expected}, got {given}")
        parts = self.parts()
        for part, expr in parts.items():
            if not isinstance(expr, sympy.Expr):
                raise GrammarError(f"{part} is not a sympy expression: {expr!r}")
            check_tree(expr, part)
        unknown = (set(self.constants) | set(self.ranges)) - set(CONSTANT_NAMES)
        if unknown:
            raise GrammarError(f"unknown constant(s) {sorted(unknown)}; known: {', '.join(CONSTANT_NAMES)}")
        used = {s.name for e in parts.values() for s in e.free_symbols}
        values, ranges = {}, {}
        for n in (n for n in CONSTANT_NAMES if n in used):
            c = CONSTANTS_BY_NAME[n]
            low, high = (float(x) for x in self.ranges.get(n, (c.low, c.high)))
            value = float(self.constants.get(n, c.default))
            if not low <= value <= high:
                raise GrammarError(f"constant {n} = {value:g} is outside its range [{low:g}, {high:g}]")
            values[n], ranges[n] = value, (low, high)
        object.__setattr__(self, "constants", types.MappingProxyType(values))
        object.__setattr__(self, "ranges", types.MappingProxyType(ranges))

    def __hash__(self) -> int:
        return hash((self.name, self.shape, tuple(self.parts().items()), tuple(self.constants.items()),
                     tuple(self.ranges.items()), self.monotone))

    def parts(self) -> dict[str, sympy.Expr]:
        """The component expressions, by part name."""
        names = MPO_PARTS if self.shape == "mpo" else ("loss",)
        return {n: getattr(self, n) for n in names}

    def psi_expr(self, side: str) -> sympy.Expr:
        """psi instantiated for side "w" or "l", phi_inv substituted (mpo shape)."""
        if self.shape != "mpo" or side not in ("w", "l"):
            raise GrammarError("psi_expr needs the 'mpo' shape and side 'w' or 'l'")
        psi = self.psi.replace(PhiInv, lambda arg: self.phi_inv.xreplace({U: arg}))
        return psi.xreplace({SYMBOLS[n]: SYMBOLS[f"{n}_{side}"] for n in SIDE_NAMES})

    def loss_expr(self) -> sympy.Expr:
        """The per-pair loss as one sympy expression over the variables (constants stay symbols)."""
        return self._loss

    @cached_property
    def _loss(self) -> sympy.Expr:
        if self.shape == "free":
            return self.loss
        margin = self.psi_expr("w") - self.psi_expr("l")
        return self.g.xreplace({Z: margin}) + self.imitation * -SYMBOLS["mlogp_w"]

    def replace(self, **changes) -> Objective:
        """A copy with fields changed; `constants` given here are merged into the current ones."""
        fields = {"name": self.name, "shape": self.shape, **self.parts(), "constants": dict(self.constants),
                  "ranges": dict(self.ranges), "monotone": self.monotone}
        if "constants" in changes:
            changes["constants"] = {**self.constants, **changes["constants"]}
        return Objective(**{**fields, **changes})

    def short_text(self, limit: int = 90) -> str:
        """One line for tables: the MPO parts that differ from DPO's (or the free loss), then the constants."""
        if self.shape == "mpo":
            parts = [f"{k}={to_text(v)}" for k, v in self.parts().items()
                     if k == "g" or v != _DPO_PARTS[k]]
            text = "  ".join(parts)
        else:
            text = to_text(self.loss)
        constants = ", ".join(f"{k}={v:.3g}" for k, v in sorted(self.constants.items()))
        text = f"{text}  [{constants}]" if constants else text
        return text if len(text) <= limit else text[:limit - 1] + "…"

    def to_dict(self) -> dict:
        """A JSON-ready description; `Objective.from_dict` reads it back through the safe parser."""
        return {"name": self.name, "shape": self.shape,
                "parts": {k: to_text(v) for k, v in self.parts().items()},
                "constants": dict(self.constants), "ranges": {k: list(v) for k, v in self.ranges.items()},
                "monotone": self.monotone}

    @classmethod
    def from_dict(cls, data: Mapping) -> Objective:
        parts = {k: _as_expr(v, k) for k, v in dict(data["parts"]).items()}
        return cls(str(data["name"]), data["shape"], **parts, constants=dict(data.get("constants", {})),
                   ranges={k: tuple(v) for k, v in dict(data.get("ranges", {})).items()},
                   monotone=bool(data.get("monotone", True)))


_DPO_PARTS = {"phi_inv": parse("u", "phi_inv"), "psi": parse(DEFAULT_PSI, "psi"), "imitation": parse("0", "imitation")}


def _as_expr(value: str | sympy.Expr | int | float, part: str) -> sympy.Expr:
    if isinstance(value, str):
        return parse(value, part)
    if isinstance(value, bool):
        raise GrammarError(f"{part}: {value!r} is not an expression")
    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        return sympy.Rational(repr(value))
    return value
