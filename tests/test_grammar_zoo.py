"""Every baseline against an independent NumPy implementation of its published formula."""
import re

import jax
import numpy as np
import pytest

from grammar import kernel
from grammar.canonical import structure_hash
from grammar.compile import compile_numpy
from grammar.identity import zoo_match
from grammar.objective import Objective
from grammar.zoo import ZOO, baseline


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def ell(x):  # -log sigma(x)
    return np.logaddexp(0.0, -x)


def sigma(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_odds(p):  # log(P / (1 - P)) for P = e^p < 1
    return p - np.log(-np.expm1(p))


def reference(name, v, c):
    lw, ll, rw, rl, nw, nl, t = (v[k] for k in ("logp_w", "logp_l", "ref_w", "ref_l", "len_w", "len_l", "t"))
    hw, hl = lw - rw, ll - rl
    delta = hw - hl
    mw, ml = lw / nw, ll / nl
    b = c.get("beta")
    e = c.get("eps")
    if name == "sft":
        return -lw
    if name == "dpo":
        return ell(b * delta)
    if name == "cdpo":
        return (1 - e) * ell(b * delta) + e * ell(-b * delta)
    if name == "robust_dpo":
        return ((1 - e) * ell(b * delta) - e * ell(-b * delta)) / (1 - 2 * e)
    if name == "ipo":
        mean_delta = (lw / nw - rw / nw) - (ll / nl - rl / nl)
        return (mean_delta - 1 / (2 * b)) ** 2
    if name == "hinge":
        return np.maximum(0.0, 1 - b * delta)
    if name == "orpo":
        return -mw - c["lam"] * log_sigmoid(log_odds(mw) - log_odds(ml))
    if name == "simpo":
        return ell(b * (mw - ml) - c["gamma"])
    if name == "cpo":
        z = lw - ll
        return (1 - e) * ell(b * z) + e * ell(-b * z) + c["lam"] * -mw
    if name == "discopop":
        s = sigma(b * delta / c["tau"])
        return (1 - s) * ell(b * delta) + s * np.exp(-b * delta)
    if name == "cpl":
        return ell(b * (lw - c["lam"] * ll))
    if name == "nca_pair":
        return ell(b * hw) + 0.5 * ell(-b * hw) + 0.5 * ell(-b * hl)
    if name == "bco_pair":
        return ell(b * hw - c["delta"]) + ell(-(b * hl - c["delta"]))
    if name == "apo_zero":
        return (1 - sigma(b * hw)) + sigma(b * hl)
    if name == "apo_down":
        return sigma(b * hw) + (1 - sigma(b * delta))
    if name == "sppo_hard":
        return (hw - 1 / (2 * b)) ** 2 + (hl + 1 / (2 * b)) ** 2
    if name == "exo_pair":
        return (sigma(b * delta) * (log_sigmoid(b * delta) - np.log(1 - e))
                + sigma(-b * delta) * (log_sigmoid(-b * delta) - np.log(e)))
    if name == "ta_mpo":
        return (1 - t) * -mw + t * ell(b * delta)
    raise KeyError(name)


PUBLISHED_CONSTANTS = {
    "dpo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "eps": 0.1}, "robust_dpo": {"beta": 0.1, "eps": 0.1},
    "ipo": {"beta": 0.1}, "hinge": {"beta": 0.1}, "orpo": {"lam": 0.1}, "simpo": {"beta": 2.0, "gamma": 0.5},
    "cpo": {"beta": 0.1, "eps": 0.0, "lam": 1.0}, "discopop": {"beta": 0.1, "tau": 0.05},
    "nca_pair": {"beta": 0.1}, "bco_pair": {"beta": 0.1, "delta": 0.0}, "apo_zero": {"beta": 0.1},
    "apo_down": {"beta": 0.1}, "sppo_hard": {"beta": 0.1}, "exo_pair": {"beta": 0.1, "eps": 1e-3},
    "ta_mpo": {"beta": 0.1}, "sft": {}, "cpl": {"beta": 0.1, "lam": 0.5},
}


def _inputs(seed: int, n: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    len_w, len_l = rng.integers(5, 60, n).astype(float), rng.integers(5, 60, n).astype(float)
    logp_w = -rng.uniform(0.05, 8.0, n) * len_w  # per-step means < 0, as ORPO's log-odds needs
    logp_l = -rng.uniform(0.05, 8.0, n) * len_l
    ref_w, ref_l = logp_w - rng.normal(0, 10, n), logp_l - rng.normal(0, 10, n)
    return {"logp_w": logp_w, "logp_l": logp_l, "ref_w": ref_w, "ref_l": ref_l, "mlogp_w": logp_w / len_w,
            "mlogp_l": logp_l / len_l, "mref_w": ref_w / len_w, "mref_l": ref_l / len_l, "len_w": len_w,
            "len_l": len_l, "t": rng.random(n)}


def test_the_zoo_is_complete_and_cited():
    assert set(ZOO) == set(PUBLISHED_CONSTANTS)
    for name, entry in ZOO.items():
        assert entry.objective.name == name and entry.formula and entry.paper
        assert entry.arxiv is None and name == "cdpo" or re.fullmatch(r"\d{4}\.\d{5}", entry.arxiv)
    with pytest.raises(KeyError, match="unknown baseline"):
        baseline("nope")


@pytest.mark.parametrize("name", list(ZOO))
def test_published_constants(name):
    assert dict(ZOO[name].objective.constants) == PUBLISHED_CONSTANTS[name]


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("perturb", [False, True], ids=["published", "perturbed"])
def test_baseline_matches_its_formula(name, perturb):
    objective = ZOO[name].objective
    constants = dict(objective.constants)
    if perturb:  # other values inside the ranges must flow through too
        rng = np.random.default_rng(len(name))
        for k, (low, high) in objective.ranges.items():
            constants[k] = float(rng.uniform(max(low, 0.02), min(high, 1.0) if k != "eps" else min(high, 0.3)))
        objective = objective.replace(constants=constants)
    variables = _inputs(seed=len(name))
    expected = reference(name, variables, constants)
    np.testing.assert_allclose(compile_numpy(objective)(variables), expected, rtol=1e-10, atol=1e-10)
    with jax.enable_x64(True):
        got = kernel.evaluate(kernel.encode(objective), variables, kernel.constant_vector(objective))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-10)


def test_orpo_log_odds_guard_for_densities():
    """Mean log-densities >= 0 (p-bar >= 1) use the clipped log1mexp: finite, continuous, increasing."""
    f = compile_numpy(baseline("orpo"))
    p_w = np.array([-1e-3, -1.01e-6, -0.99e-6, 0.0, 0.5, 3.0])
    values = f({"mlogp_w": p_w, "mlogp_l": np.full_like(p_w, -1.0)})
    assert np.isfinite(values).all()
    assert abs(values[1] - values[2]) < 1e-6  # continuous where the clip starts
    assert np.all(np.diff(values[2:]) < 0)  # still rewards a more likely chosen segment
    clipped_log_odds = 3.0 - np.log(-np.expm1(-1e-6))
    expected = -3.0 - 0.1 * log_sigmoid(clipped_log_odds - log_odds(-1.0))
    assert values[-1] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------- zoo structure (identity)
APO_ZERO_REWRITTEN = "sigmoid(beta*(logp_l - ref_l)) - sigmoid(beta*(logp_w - ref_w)) + 1"


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_loss_matches_itself(name):
    match = zoo_match(ZOO[name].objective)
    assert match is not None and match.name == name
    assert dict(match.constants) == dict(ZOO[name].objective.constants)


def test_a_zoo_loss_written_differently_with_other_constants_is_named():
    found = Objective.free("x", APO_ZERO_REWRITTEN, constants={"beta": 0.0127})
    assert zoo_match(found).describe() == "apo_zero at β 0.0127"
    assert zoo_match(found, structure_hash(found)) == zoo_match(found)  # a stored candidate's hash
    assert zoo_match(Objective.mpo("y", g="-logsigmoid(z)", constants={"beta": 0.3})).describe() == "dpo at β 0.3"
    assert zoo_match(baseline("sft").replace(name="copy")).describe() == "sft"  # no constants: just the name


@pytest.mark.parametrize("objective", [
    Objective.free("x", APO_ZERO_REWRITTEN.replace("+ 1", "+ 2"), constants={"beta": 0.0127}),
    Objective.free("x", APO_ZERO_REWRITTEN.replace("sigmoid(beta*(logp_l", "sigmoid(lam*(logp_l"),
                   constants={"beta": 0.0127, "lam": 0.0127}),
    Objective.mpo("y", g="softplus(-z) + c0*relu(-z)", constants={"c0": 0.5}),
], ids=["another offset", "another constant on one side", "a new g"])
def test_near_misses_are_not_zoo_losses(objective):
    assert zoo_match(objective) is None
