"""Population kernel and lambdify compilation: agreement with each other and with exact sympy values,
gradients, populations, and no recompilation for new programs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings

from grammar import kernel
from grammar.compile import compile_jax, compile_numpy
from grammar.language import CONSTANT_NAMES, SYMBOLS, VARIABLES, GrammarError, safe_exp, to_plain_sympy
from grammar.objective import Objective
from grammar.probes import random_inputs
from grammar.testing import expressions
from grammar.zoo import ZOO

BATCH = 6


def _moderate_inputs(seed: int, n: int = BATCH) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {n_: rng.normal(0.0, 2.0, n) for n_ in VARIABLES}
    values.update(len_w=rng.integers(1, 10, n).astype(float), len_l=rng.integers(1, 10, n).astype(float),
                  t=rng.random(n))
    return values


def _constants(seed: int) -> np.ndarray:
    return kernel.constant_vector({}) * np.random.default_rng(seed).uniform(0.5, 1.5, kernel.N_CONSTANTS)


@jax.jit
def _kernel_value_and_grads(program, variables, constants):
    def total(variables, constants):
        out = kernel.interpret(program, variables, constants)
        return out.sum(), out

    (d_vars, d_consts), out = jax.grad(total, argnums=(0, 1), has_aux=True)(variables, constants)
    return out, d_vars, d_consts


def _exact(expr, variables, constants, i):
    values = {SYMBOLS[n]: sympy.Float(float(v[i]), 30) for n, v in variables.items()}
    values.update({SYMBOLS[n]: sympy.Float(float(c), 30) for n, c in zip(CONSTANT_NAMES, constants)})
    return float(to_plain_sympy(expr).xreplace(values).evalf(30))


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions(max_leaves=8))
def test_kernel_lambdify_and_exact_sympy_agree(expr):
    seed = abs(hash(sympy.srepr(expr))) % 2**32
    variables, constants = _moderate_inputs(seed), _constants(seed)
    try:
        program = kernel.encode(expr)
    except GrammarError:
        return  # longer than the kernel: covered by test_too_long_programs_are_rejected
    named = dict(zip(CONSTANT_NAMES, constants.tolist()))
    with jax.enable_x64(True):
        out, d_vars, d_consts = _kernel_value_and_grads(program, variables, constants)
        f = compile_jax(expr)
        jax_vars = {n: jnp.asarray(v) for n, v in variables.items()}
        jax_consts = {n: jnp.asarray(c) for n, c in named.items()}
        lam_out = f(jax_vars, jax_consts)
        lam_d_vars, lam_d_consts = jax.grad(lambda v, c: jnp.sum(f(v, c)), argnums=(0, 1))(jax_vars, jax_consts)
    numpy_out = compile_numpy(expr)(variables, named)
    if not np.all(np.abs(numpy_out) < 1e12):
        return  # far outside any loss's scale: relative comparisons lose meaning
    exact = [_exact(expr, variables, constants, i) for i in range(BATCH)]
    _close(numpy_out, exact, 1e-7)
    _close(out, numpy_out, 1e-9)
    _close(lam_out, numpy_out, 1e-9)
    used = {s.name for s in expr.free_symbols}
    for n in VARIABLES:
        expected = lam_d_vars[n] if n in used else np.zeros(BATCH)
        _close(d_vars[n], expected, 1e-7)
    for i, n in enumerate(CONSTANT_NAMES):
        expected = float(np.asarray(lam_d_consts[n])) if n in used else 0.0
        _close(d_consts[i], expected, 1e-7)


@pytest.mark.parametrize("name", list(ZOO))
def test_kernel_in_float32_matches_float64_numpy_on_realistic_inputs(name):
    objective = ZOO[name].objective
    variables = random_inputs(64, seed=3)
    expected = compile_numpy(objective)(variables)
    got = kernel.evaluate(kernel.encode(objective), {n: v.astype(np.float32) for n, v in variables.items()},
                          kernel.constant_vector(objective).astype(np.float32))
    assert got.dtype == jnp.float32
    _close(got, expected, 2e-4)


def test_population_evaluation_matches_one_by_one_and_vmap_over_inputs():
    objectives = [b.objective for b in ZOO.values()]
    programs = kernel.stack([kernel.encode(o) for o in objectives])
    constants = np.stack([kernel.constant_vector(o) for o in objectives]).astype(np.float32)
    variables = {n: v.astype(np.float32) for n, v in random_inputs(32, seed=5).items()}
    together = np.asarray(kernel.evaluate_population(programs, variables, constants))
    assert together.shape == (len(objectives), 32)
    for i, o in enumerate(objectives):
        alone = kernel.evaluate(kernel.encode(o), variables, constants[i])
        np.testing.assert_allclose(together[i], alone, rtol=1e-6, atol=1e-6)
    per_program_inputs = {n: np.stack([v] * len(objectives)) for n, v in variables.items()}
    mapped = jax.vmap(kernel.interpret)(programs, per_program_inputs, constants)
    np.testing.assert_allclose(mapped, together, rtol=1e-6, atol=1e-6)


def test_new_programs_never_recompile():
    variables = {n: v.astype(np.float32) for n, v in random_inputs(32, seed=7).items()}
    objectives = [b.objective for b in ZOO.values()]
    population = kernel.stack([kernel.encode(o) for o in objectives])
    population_constants = np.stack([kernel.constant_vector(o) for o in objectives]).astype(np.float32)
    np.asarray(kernel.evaluate(kernel.encode(objectives[0]), variables,
                               kernel.constant_vector(objectives[0]).astype(np.float32)))
    np.asarray(kernel.evaluate_population(population, variables, population_constants))
    compiles, traces, sizes = kernel.compilation_count(), kernel.trace_count(), kernel.cache_sizes()

    rng = np.random.default_rng(0)
    fresh = objectives + [Objective.free(f"random{i}", e) for i, e in enumerate((
        "exp(-abs(logp_w - logp_l))*tanh(mlogp_w) + max(ref_w, t)",
        "pow(logp_w - ref_w, 1.5) - sqrt(len_w)/len_l + log1mexp(mlogp_l)",
        "c0*softplus(c1*(logp_l - logp_w)) + c2*t",
    ))]
    for o in fresh:
        constants = (kernel.constant_vector(o) * rng.uniform(0.5, 1.5, kernel.N_CONSTANTS)).astype(np.float32)
        out = np.asarray(kernel.evaluate(kernel.encode(o), variables, constants))
        assert out.shape == (32,)
    other = kernel.stack([kernel.encode(o) for o in fresh[-len(objectives):]])
    np.asarray(kernel.evaluate_population(other, variables, population_constants * 1.1))

    assert kernel.compilation_count() == compiles
    assert kernel.trace_count() == traces
    assert kernel.cache_sizes() == sizes


def test_compilation_counter_sees_a_new_shape():
    before = kernel.compilation_count()
    program = kernel.encode(ZOO["dpo"].objective)
    variables = {n: v.astype(np.float32) for n, v in random_inputs(3, seed=1).items()}
    np.asarray(kernel.evaluate(program, variables, kernel.constant_vector({}).astype(np.float32)))
    assert kernel.compilation_count() > before  # batch 3 is new: the counter must notice


def test_slopes_flow_through_per_step_means():
    objective = ZOO["simpo"].objective  # uses only mlogp_w / mlogp_l
    rng = np.random.default_rng(0)
    length = rng.integers(1, 50, 32).astype(float)
    sums = {"logp_w": -rng.uniform(0, 8, 32) * length, "logp_l": -rng.uniform(0, 8, 32) * length,
            "ref_w": np.zeros(32), "ref_l": np.zeros(32), "len_w": length, "len_l": length, "t": rng.random(32)}
    with jax.enable_x64(True):
        loss, d_w, d_l = kernel.loss_and_slopes(kernel.encode(objective), sums, kernel.constant_vector(objective))
    margin = 2.0 * (sums["logp_w"] - sums["logp_l"]) / length - 0.5
    np.testing.assert_allclose(loss, np.logaddexp(0, -margin), rtol=1e-12)
    np.testing.assert_allclose(d_w, -2.0 / length / (1.0 + np.exp(margin)), rtol=1e-10)
    np.testing.assert_allclose(d_l, 2.0 / length / (1.0 + np.exp(margin)), rtol=1e-10)


def test_encoding_shares_subexpressions_and_folds_constants():
    assert kernel.encode(ZOO["dpo"].objective).length == 7
    listing = kernel.disassemble(kernel.encode(ZOO["dpo"].objective))
    assert listing.splitlines()[0] == "%0 = sub logp_w, ref_w"
    assert "logsigmoid" in listing and "beta" in listing
    shared = kernel.encode(Objective.free("x", "softplus(logp_w - logp_l) * sigmoid(softplus(logp_w - logp_l))"))
    assert shared.length == 4  # sub, softplus, sigmoid, mul
    folded = kernel.encode(Objective.free("x", "sigmoid(0)*logp_w"))
    assert folded.length == 2 and folded.value[0] == 0.5
    bare = kernel.encode(Objective.free("x", "logp_w"))
    assert bare.length == 1 and kernel.OPCODES[bare.op[0]] == "nop"
    power = kernel.encode(SYMBOLS["logp_w"] ** 7)  # x**7 = ((x**2)*x)**2 * x
    assert power.length == 4


def test_too_long_programs_are_rejected():
    expr = sum(safe_exp(k * SYMBOLS["logp_w"]) for k in range(1, 40))
    with pytest.raises(GrammarError, match="kernel holds 64"):
        kernel.encode(expr)
    assert kernel.encode(expr, max_instructions=256).op.shape == (256,)
    with pytest.raises(GrammarError):
        kernel.encode(SYMBOLS["z"] + 1)


def test_constant_vector_layout():
    vector = kernel.constant_vector({"beta": 0.3, "c9": -2.0})
    assert vector.shape == (16,) and vector[0] == 0.3 and vector[-1] == -2.0
    assert vector[CONSTANT_NAMES.index("tau")] == 0.05
    with pytest.raises(KeyError):
        kernel.constant_vector({"nope": 1.0})
    assert kernel.FIRST_RESULT_SLOT == len(VARIABLES) + len(CONSTANT_NAMES)
