"""One function per expression, through sympy's lambdify (JAX or NumPy), and the shared input builder.

The population kernel (`grammar.kernel`) is the fast path that never recompiles; these per-expression
functions are the readable, independent path used for plots, fingerprints and cross-checks.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np
import sympy

from grammar import ops_jax, ops_numpy
from grammar.language import CONSTANTS_BY_NAME, PROTECTED, VARIABLES
from grammar.objective import Objective

Compiled = Callable[..., object]


def make_inputs(logp_w, logp_l, ref_w, ref_l, len_w, len_l, t) -> dict[str, jnp.ndarray]:
    """All `VARIABLES` (JAX arrays) from sums, lengths and progress; per-step means = sum / max(len, 1).

    Differentiable: gradients w.r.t. logp_w / logp_l flow through both the sums and the means.
    """
    logp_w, logp_l, ref_w, ref_l = (jnp.asarray(x) for x in (logp_w, logp_l, ref_w, ref_l))
    dtype = jnp.result_type(logp_w, logp_l, ref_w, ref_l, jnp.float32)
    len_w = jnp.maximum(jnp.asarray(len_w, dtype), 1.0)
    len_l = jnp.maximum(jnp.asarray(len_l, dtype), 1.0)
    values = dict(logp_w=logp_w, logp_l=logp_l, ref_w=ref_w, ref_l=ref_l, mlogp_w=logp_w / len_w,
                  mlogp_l=logp_l / len_l, mref_w=ref_w / len_w, mref_l=ref_l / len_l, len_w=len_w,
                  len_l=len_l, t=jnp.asarray(t, dtype))
    return {n: values[n] for n in VARIABLES}


def _lambdify(source: Objective | sympy.Expr, backend: str) -> Compiled:
    expr = source.loss_expr() if isinstance(source, Objective) else source
    if not isinstance(expr, sympy.Expr):
        raise TypeError(f"expected an Objective or a sympy expression, got {type(source).__name__}")
    bound = dict(source.constants) if isinstance(source, Objective) else {}
    impl = ops_jax if backend == "jax" else ops_numpy
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    names = [s.name for s in symbols]
    fn = sympy.lambdify(symbols, expr, modules=[{c.__name__: getattr(impl, c.__name__) for c in PROTECTED},
                                                backend])

    def evaluate(variables: Mapping[str, object], constants: Mapping[str, float] | None = None):
        given = {**bound, **(constants or {})}
        args = []
        for name in names:
            if name in variables:
                args.append(variables[name])
            elif name in given:
                args.append(given[name])
            elif name in CONSTANTS_BY_NAME:
                args.append(CONSTANTS_BY_NAME[name].default)
            else:
                raise KeyError(f"no value for variable {name!r}")
        shape = np.broadcast_shapes(*(np.shape(v) for v in variables.values()))
        if backend == "numpy":
            with np.errstate(all="ignore"):
                return np.broadcast_to(np.asarray(fn(*args), dtype=np.float64), shape)
        out = jnp.asarray(fn(*args))
        if not jnp.issubdtype(out.dtype, jnp.floating):  # a constant expression
            out = out.astype(jnp.result_type(float))
        return jnp.broadcast_to(out, shape)

    evaluate.expr = expr
    return evaluate


def compile_jax(source: Objective | sympy.Expr) -> Compiled:
    """`f(variables, constants=None) -> jnp.ndarray` for an expression or objective.

    `variables` maps names to arrays (the result has their broadcast shape); constants default to the
    objective's values, then to the table's.
    Pure JAX: jit it, vmap it, differentiate it.
    """
    return _lambdify(source, "jax")


def compile_numpy(source: Objective | sympy.Expr) -> Compiled:
    """`f(variables, constants=None) -> np.ndarray`, the float64 NumPy twin of `compile_jax`."""
    return _lambdify(source, "numpy")
