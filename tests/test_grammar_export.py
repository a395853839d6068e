"""Exported code is standalone and computes what the kernel computes (values and gradients, float64)."""
import ast
import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings

from grammar import kernel
from grammar.compile import compile_numpy
from grammar.export import TRL_ARGUMENTS, export, export_jax, export_latex, export_sympy, export_torch
from grammar.language import GrammarError
from grammar.objective import Objective
from grammar.probes import from_sums, probe_inputs
from grammar.testing import expressions
from grammar.zoo import ZOO

KITCHEN_SINK = Objective.free("kitchen_sink", (
    "exp(-abs(logp_w - logp_l)/len_w) + log(1 + sigmoid(mlogp_w)) + log1p(tanh(ref_w - ref_l))"
    " - log1mexp(mlogp_l) + softplus(mref_w - mref_l) + logsigmoid(beta*(logp_w - ref_w)) + relu(t - 0.5)"
    " + min(logp_w, 0) + max(0.5, mlogp_l) + pow(logp_w - ref_w, 1.5) + pow(len_l, c0) + c1*t"
    " + 1/(1 + square(logp_l - ref_l)) + sqrt(len_w) + (logp_w/100)**3 + max(min(t, mlogp_w), mref_l)"
), constants={"c0": -0.7, "c1": 2.0})
OBJECTIVES = [*(b.objective for b in ZOO.values()), KITCHEN_SINK]
ARGUMENT_ORDER = ("logp_w", "logp_l", "ref_w", "ref_l", "len_w", "len_l", "t")
_counter = itertools.count()


def _load(source: str, tmp_path):
    path = tmp_path / f"exported_{next(_counter)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(seed: int, n: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    len_w, len_l = rng.integers(1, 50, n).astype(float), rng.integers(1, 50, n).astype(float)
    logp_w, logp_l = rng.uniform(-8, 1, n) * len_w, rng.uniform(-8, 1, n) * len_l
    return {"logp_w": logp_w, "logp_l": logp_l, "ref_w": logp_w + rng.normal(0, 5, n),
            "ref_l": logp_l + rng.normal(0, 5, n), "len_w": len_w, "len_l": len_l, "t": rng.random(n)}


def _kernel(objective: Objective, sums: dict[str, np.ndarray]):
    program, constants = kernel.encode(objective), kernel.constant_vector(objective)
    with jax.enable_x64(True):
        return tuple(np.asarray(a) for a in kernel.loss_and_slopes(program, sums, constants))


def _torch(module, sums):
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}
    tensors["logp_w"].requires_grad_(True)
    tensors["logp_l"].requires_grad_(True)
    out = module.loss(*(tensors[k] for k in ARGUMENT_ORDER))
    zeros = np.zeros(len(sums["logp_w"]))
    if not out.requires_grad:  # the loss does not involve the policy
        return out.numpy(), zeros, zeros
    d_w, d_l = torch.autograd.grad(out.sum(), (tensors["logp_w"], tensors["logp_l"]), allow_unused=True)
    return (out.detach().numpy(), zeros if d_w is None else d_w.numpy(), zeros if d_l is None else d_l.numpy())


def _jax(module, sums):
    rest = [sums[k] for k in ARGUMENT_ORDER[2:]]

    def total(logp_w, logp_l):
        out = module.loss(logp_w, logp_l, *rest)
        return out.sum(), out

    with jax.enable_x64(True):
        (d_w, d_l), out = jax.grad(total, argnums=(0, 1), has_aux=True)(jnp.asarray(sums["logp_w"]),
                                                                        jnp.asarray(sums["logp_l"]))
        return np.asarray(out), np.asarray(d_w), np.asarray(d_l)


def _agree(got, expected):
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10)


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_torch_and_jax_exports_match_the_kernel(objective, tmp_path):
    sums = _inputs(seed=len(objective.name))
    expected = _kernel(objective, sums)
    torch_source, jax_source = export_torch(objective), export_jax(objective)
    assert _imports(torch_source) == {"torch"}
    assert _imports(jax_source) == {"jax", "jax.numpy"}
    _agree(_torch(_load(torch_source, tmp_path), sums), expected)
    _agree(_jax(_load(jax_source, tmp_path), sums), expected)


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(expr=expressions(max_leaves=8))
def test_exports_of_random_losses_match_the_kernel(expr, tmp_path):
    objective = Objective.free("random", expr)
    try:
        kernel.encode(objective)
    except GrammarError:
        return
    sums = _inputs(seed=3)
    expected = _kernel(objective, sums)
    if not np.all(np.abs(expected[0]) < 1e12):
        return
    _agree(_torch(_load(export_torch(objective), tmp_path), sums), expected)
    _agree(_jax(_load(export_jax(objective), tmp_path), sums), expected)


def test_exported_constants_are_keyword_arguments(tmp_path):
    dpo = ZOO["dpo"].objective
    module = _load(export_torch(dpo), tmp_path)
    assert module.CONSTANTS == {"beta": 0.1}
    sums = {k: torch.tensor(v) for k, v in _inputs(seed=1).items()}
    sharper = module.loss(*(sums[k] for k in ARGUMENT_ORDER), beta=0.5)
    expected = _kernel(dpo.replace(constants={"beta": 0.5}), {k: v.numpy() for k, v in sums.items()})[0]
    np.testing.assert_allclose(sharper.numpy(), expected, rtol=1e-10)
    assert list(TRL_ARGUMENTS.values()) == [
        "policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
        "chosen_lengths", "rejected_lengths", "progress"]


def test_torch_export_accepts_python_progress_and_float32(tmp_path):
    module = _load(export_torch(ZOO["ta_mpo"].objective), tmp_path)
    x = torch.tensor([-10.0, -20.0])
    out = module.loss(x, x - 1, x, x, torch.tensor([5, 10]), torch.tensor([5, 10]), 0.25)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_sympy_export_rebuilds_the_loss(objective, tmp_path):
    source = export_sympy(objective)
    assert _imports(source) == {"sympy"}
    module = _load(source, tmp_path)
    assert isinstance(module.loss, sympy.Expr)
    assert module.CONSTANTS == dict(objective.constants)
    sums = _inputs(seed=2)
    variables = from_sums(*(sums[k] for k in ARGUMENT_ORDER))
    values = {**variables, **module.CONSTANTS}
    symbols = list(module.SYMBOLS.values())
    rebuilt = sympy.lambdify(symbols, module.loss, "numpy")(*(values[s.name] for s in symbols))
    np.testing.assert_allclose(rebuilt, compile_numpy(objective)(variables), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_latex_export(objective):
    text = export_latex(objective)
    assert text.count("{") == text.count("}")
    assert r"\begin{aligned}" in text and r"\mathcal{L}" in text
    if objective.shape == "mpo":
        assert r"\phi^{-1}(u)" in text and "g(z)" in text
    for name in objective.constants:
        assert "with" in text and (name in text or "\\" in text)


def test_latex_of_dpo_reads_like_the_paper():
    text = export_latex(ZOO["dpo"].objective)
    assert r"- \log\sigma\left(z\right)" in text
    assert r"\log\pi_\theta(y_w)" in text and r"\log\pi_{\mathrm{ref}}(y_l)" in text
    assert r"\beta = 0.1" in text


def test_export_dispatch():
    dpo = ZOO["dpo"].objective
    assert export(dpo, "torch") == export_torch(dpo)
    assert export(dpo, "latex") == export_latex(dpo)
    with pytest.raises(ValueError, match="unknown export format"):
        export(dpo, "fortran")


def _sympy_values(objective: Objective, sums: dict[str, np.ndarray], tmp_path) -> np.ndarray:
    module = _load(export_sympy(objective), tmp_path)
    values = {**sums, **module.CONSTANTS}
    symbols = list(module.SYMBOLS.values())
    with np.errstate(all="ignore"):
        return np.broadcast_to(sympy.lambdify(symbols, module.loss, "numpy")(*(values[s.name] for s in symbols)),
                               sums["logp_w"].shape)


def _probe_sums(objective: Objective) -> dict[str, np.ndarray]:
    """The validity checks' probes (corners of the data domain + random pairs), and for every loss the inputs
    that broke the old sympy export: sums drawn from N(-5000, 3000)."""
    probes = probe_inputs(256)
    rng = np.random.default_rng(0)
    wide = {k: rng.normal(-5000, 3000, 1000) for k in ("logp_w", "logp_l", "ref_w", "ref_l")}
    wide |= {"len_w": rng.integers(1, 1000, 1000).astype(float), "len_l": rng.integers(1, 1000, 1000).astype(float),
             "t": rng.random(1000)}
    return {k: np.concatenate([probes[k], wide[k]]) for k in ARGUMENT_ORDER}


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_every_export_is_finite_wherever_the_kernel_is(objective, tmp_path):
    sums = _probe_sums(objective)
    loss, d_w, d_l = _kernel(objective, sums)
    finite = np.isfinite(loss)
    slopes = np.isfinite(d_w) & np.isfinite(d_l)
    assert finite.mean() > 0.99  # the check below is about the exports, not a broken loss
    for name, got in (("torch", _torch(_load(export_torch(objective), tmp_path), sums)),
                      ("jax", _jax(_load(export_jax(objective), tmp_path), sums))):
        assert np.isfinite(got[0])[finite].all(), name
        assert (np.isfinite(got[1]) & np.isfinite(got[2]))[slopes].all(), name
    assert np.isfinite(_sympy_values(objective, sums, tmp_path))[finite].all(), "sympy"


def test_sympy_export_takes_the_trainers_inputs_and_derives_the_means(tmp_path):
    module = _load(export_sympy(ZOO["simpo"].objective), tmp_path)
    assert set(module.SYMBOLS) <= set(ARGUMENT_ORDER) | set(module.CONSTANTS)
    assert not any(name.startswith("m") for name in module.SYMBOLS), "per-step means are not free symbols"
    orpo = _load(export_sympy(ZOO["orpo"].objective), tmp_path)
    assert orpo.mlogp_w == orpo.logp_w / sympy.Max(orpo.len_w, 1)


def test_headers_name_the_zoo_structure(tmp_path):
    found = Objective.free("found", "sigmoid(beta*(logp_l - ref_l)) - sigmoid(beta*(logp_w - ref_w)) + 1",
                           constants={"beta": 0.0127})
    line = "Structure: the zoo loss apo_zero at β 0.0127 (same canonical form, constants aside)."
    for fmt in ("torch", "jax", "sympy"):
        source = export(found, fmt)
        assert line in ast.get_docstring(ast.parse(source)), fmt
        assert "Structure:" not in export(KITCHEN_SINK, fmt), fmt  # a structure not in the zoo: no line
    assert f"% {line}" in export_latex(found) and "Structure:" not in export_latex(KITCHEN_SINK)
    assert _load(export_torch(found), tmp_path).CONSTANTS == {"beta": 0.0127}  # still a working module
