"""The operator table, the protected functions' implementations, and `Objective`."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
import torch

from grammar import kernel, ops_jax, ops_numpy, ops_torch
from grammar.language import (
    CONSTANT_NAMES, CONSTANTS, FUNCTION_NAMES, OPERATORS, PROTECTED, SYMBOLS, VARIABLES, GrammarError,
    check_tree, safe_div, safe_exp, safe_pow, softplus,
)
from grammar.objective import Objective
from grammar.zoo import ZOO

EXTREMES = [-1e4, -2000.0, -50.5, -20.0, -1.0, -0.7, -1e-3, -2e-6, -1e-7, 0.0, 1e-7, 2e-6, 0.5, 1.0, 3.0,
            49.0, 51.0, 300.0, 1e4]
EXPONENTS = [-4.0, -1.5, -0.5, 0.0, 0.5, 1.0, 2.5, 4.0, 7.0, -9.0]
UNARY = [c for c in PROTECTED if max(c.nargs) == 1]
BINARY = [c for c in PROTECTED if max(c.nargs) == 2]
x_, y_ = sympy.symbols("x y", real=True)


def _arguments(cls):
    if cls is safe_pow:
        return [(x, k) for x in EXTREMES for k in EXPONENTS]
    if max(cls.nargs) == 2:
        return list(itertools.product(EXTREMES, EXTREMES))
    return [(x,) for x in EXTREMES]


def _exact(cls, args):
    return float(cls.definition(*(sympy.Float(a, 30) for a in args)).evalf(30))


@pytest.mark.parametrize("cls", PROTECTED, ids=lambda c: c.__name__)
def test_every_backend_computes_the_definition(cls):
    args = _arguments(cls)
    expected = np.array([_exact(cls, a) for a in args])
    columns = [np.array(c, dtype=np.float64) for c in zip(*args)]
    name = cls.__name__
    got_numpy = getattr(ops_numpy, name)(*columns)
    with jax.enable_x64(True):
        got_jax = np.asarray(getattr(ops_jax, name)(*(jnp.asarray(c) for c in columns)))
    got_torch = getattr(ops_torch, name)(*(torch.tensor(c) for c in columns)).numpy()
    for got in (got_numpy, got_jax, got_torch):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_operator_is_finite_with_finite_gradient(dtype):
    grids = {c.__name__: [np.array(col, dtype) for col in zip(*_arguments(c))] for c in PROTECTED}

    def values_and_gradients(grids):
        out = {}
        for name, columns in grids.items():
            fn = getattr(ops_jax, name)
            argnums = tuple(range(len(columns)))
            out[name] = (fn(*columns), jax.grad(lambda *a: fn(*a).sum(), argnums=argnums)(*columns))
        return out

    with jax.enable_x64(dtype == "float64"):
        results = jax.jit(values_and_gradients)(grids)
    for name, (values, gradients) in results.items():
        assert np.isfinite(np.asarray(values)).all(), name
        assert all(np.isfinite(np.asarray(g)).all() for g in gradients), name
    for name, columns in grids.items():
        tensors = [torch.tensor(c, requires_grad=True) for c in columns]
        out = getattr(ops_torch, name)(*tensors)
        out.sum().backward()
        assert torch.isfinite(out).all(), name
        assert all(torch.isfinite(t.grad).all() for t in tensors), name


def test_torch_helpers_accept_python_number_operands():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    assert torch.equal(ops_torch.minimum(x, 0.0), torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(ops_torch.maximum(1.0, x), torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(ops_torch.safe_pow(x, 2.0), x.abs().clamp(min=1e-6) ** 2)
    assert torch.allclose(ops_torch.safe_div(x, 2.0), x / 2)
    assert torch.allclose(ops_torch.safe_div(1.0, x), torch.tensor([-0.5, 1e6, 1 / 3], dtype=torch.float64))


def test_every_protected_function_has_every_implementation_and_an_opcode():
    for cls in PROTECTED:
        for module in (ops_numpy, ops_jax, ops_torch):
            assert callable(getattr(module, cls.__name__)), (module.__name__, cls.__name__)
        assert cls.__name__ in kernel.OPCODE
        assert cls.domain and cls.cost > 0


def test_operator_table_names_and_arities():
    assert {"exp", "log", "log1p", "log1mexp", "logsigmoid", "softplus", "sigmoid", "tanh", "square", "abs",
            "relu", "min", "max", "pow", "sqrt"} == set(FUNCTION_NAMES)
    for name, op in OPERATORS.items():
        args = [x_, sympy.Integer(2)] if op.arity == 2 else [x_]
        assert isinstance(op.build(*args), sympy.Expr), name
    assert OPERATORS["**"].build(x_, sympy.Integer(2)) == x_**2
    assert OPERATORS["**"].build(x_, sympy.Integer(0)) == 1
    assert OPERATORS["pow"].build(x_, sympy.Rational(1, 2)) == safe_pow(x_, sympy.Rational(1, 2))
    assert OPERATORS["/"].build(x_, sympy.Integer(4)) == x_ / 4
    assert OPERATORS["/"].build(x_, y_) == safe_div(x_, y_)
    with pytest.raises(GrammarError, match="outside"):
        OPERATORS["pow"].build(x_, sympy.Integer(5))
    with pytest.raises(GrammarError, match="literal 0"):
        OPERATORS["/"].build(x_, sympy.Integer(0))


def test_protected_functions_print_as_grammar_text_and_latex():
    assert str(safe_exp(x_) + softplus(-x_)) == "exp(x) + softplus(-x)"
    assert sympy.latex(safe_exp(x_)) == "e^{x}"
    assert safe_exp(sympy.Integer(60)).evalf(20) == pytest.approx(float(np.exp(50.0)))


def test_check_tree_rejects_nodes_outside_the_language():
    logp_w = SYMBOLS["logp_w"]
    check_tree(softplus(-logp_w) + logp_w**3)
    for bad in (sympy.exp(logp_w), 1 / logp_w, sympy.sqrt(logp_w), sympy.Symbol("x") + logp_w,
                sympy.Piecewise((logp_w, logp_w > 0), (0, True)), SYMBOLS["z"] * 2, logp_w + sympy.oo):
        with pytest.raises(GrammarError):
            check_tree(bad, "loss")


def test_constants_table_defaults_lie_in_their_ranges():
    assert len(CONSTANT_NAMES) == len(set(CONSTANT_NAMES)) == kernel.N_CONSTANTS
    for c in CONSTANTS:
        assert c.low <= c.default <= c.high, c.name


def test_default_mpo_objective_is_dpo():
    dpo = Objective.mpo("dpo", g="-logsigmoid(z)")
    s = SYMBOLS
    margin = s["beta"] * (s["logp_w"] - s["ref_w"]) - s["beta"] * (s["logp_l"] - s["ref_l"])
    from grammar.language import logsigmoid
    assert sympy.simplify(dpo.loss_expr() - (-logsigmoid(margin))) == 0
    assert dict(dpo.constants) == {"beta": 0.1} and dict(dpo.ranges) == {"beta": (1e-3, 10.0)}


def test_psi_instantiates_each_side_and_substitutes_phi_inv():
    objective = Objective.mpo("x", phi_inv="u - log1mexp(u)", psi="phi_inv(mlogp)*len + t", g="-z")
    s = SYMBOLS
    from grammar.language import log1mexp
    assert objective.psi_expr("w") == (s["mlogp_w"] - log1mexp(s["mlogp_w"])) * s["len_w"] + s["t"]
    assert objective.loss_expr().free_symbols == {s[n] for n in ("mlogp_w", "mlogp_l", "len_w", "len_l")}


def test_imitation_multiplies_the_per_step_mean_nll():
    objective = Objective.mpo("sft", g="0*z", imitation="1 - t")
    assert sympy.expand(objective.loss_expr() - (SYMBOLS["t"] - 1) * SYMBOLS["mlogp_w"]) == 0


@pytest.mark.parametrize("build, message", [
    (lambda: Objective.mpo("x", psi="beta*logp_w"), "unknown name 'logp_w'"),
    (lambda: Objective.mpo("x", g="phi_inv(z)"), "only be used in psi"),
    (lambda: Objective.mpo("x", imitation="logp"), "unknown name 'logp'"),
    (lambda: Objective.free("x", "softplus(-z)"), "unknown name 'z'"),
    (lambda: Objective.mpo("x", constants={"beta": 20.0}), "outside its range"),
    (lambda: Objective.mpo("x", constants={"betta": 1.0}), "unknown constant"),
    (lambda: Objective("x", "free", phi_inv=SYMBOLS["u"], loss=SYMBOLS["t"]), "has parts"),
    (lambda: Objective("x", "other", loss=SYMBOLS["t"]), "unknown objective shape"),
    (lambda: Objective.free("x", sympy.exp(SYMBOLS["logp_w"])), "not in the language"),
    (lambda: Objective.free("x", True), "not an expression"),
])
def test_invalid_objectives_are_rejected(build, message):
    with pytest.raises(GrammarError, match=message):
        build()


def test_constants_are_filled_and_unused_ones_dropped():
    objective = Objective.mpo("x", g="-logsigmoid(z - gamma)", constants={"gamma": 1.0, "tau": 3.0},
                              ranges={"gamma": (0.0, 2.0)})
    assert dict(objective.constants) == {"beta": 0.1, "gamma": 1.0}
    assert dict(objective.ranges) == {"beta": (1e-3, 10.0), "gamma": (0.0, 2.0)}
    changed = objective.replace(constants={"beta": 0.5}, name="y")
    assert dict(changed.constants) == {"beta": 0.5, "gamma": 1.0} and changed.name == "y"
    assert objective != changed and hash(objective) != hash(changed)
    with pytest.raises(TypeError):
        objective.constants["beta"] = 3.0


@pytest.mark.parametrize("name", list(ZOO))
def test_to_dict_round_trips_through_the_parser(name):
    objective = ZOO[name].objective
    data = objective.to_dict()
    import json
    again = Objective.from_dict(json.loads(json.dumps(data)))
    assert again == objective and hash(again) == hash(objective)


def test_variables_are_fixed():
    assert VARIABLES == ("logp_w", "logp_l", "ref_w", "ref_l", "mlogp_w", "mlogp_l", "mref_w", "mref_l",
                         "len_w", "len_l", "t")
    assert SYMBOLS["len_w"].is_positive and SYMBOLS["logp_w"].is_real
