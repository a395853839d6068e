"""Validity checks: every baseline passes; broken candidates fail with a reason; nothing raises."""
import sympy
import pytest

from grammar.language import SYMBOLS, safe_exp
from grammar.objective import Objective
from grammar.validity import Verdict, check
from grammar.zoo import ZOO

NOT_MONOTONE = ["cdpo", "ipo", "discopop", "nca_pair", "apo_down", "sppo_hard", "exo_pair"]


@pytest.mark.parametrize("name", list(ZOO))
def test_every_baseline_is_valid(name):
    verdict = check(ZOO[name].objective)
    assert verdict.ok, verdict.reason
    assert verdict.stats["nonfinite_loss"] == 0 and verdict.stats["nonfinite_gradient"] == 0
    assert verdict.stats["probes"] > 1000


@pytest.mark.parametrize("name", NOT_MONOTONE)
def test_non_monotone_baselines_fail_when_monotonicity_is_required(name):
    objective = ZOO[name].objective
    assert not objective.monotone
    verdict = check(objective, monotone=True)
    assert not verdict.ok
    assert "non-increasing in the margin" in verdict.reason or "the loss increases with logp_w" in verdict.reason
    assert verdict.stats.get("g_increasing", 0) > 0 or verdict.stats["increasing_in_logp_w"] > 0
    assert check(objective, monotone=True, max_violation=0.5).ok  # the fraction is what is compared


@pytest.mark.parametrize("objective, reason", [
    (Objective.free("up", "logp_w - logp_l"), "the loss increases with logp_w on 100.0% of the probes"),
    (Objective.free("down", "-logp_w - logp_l"), "the loss decreases with logp_l"),
    (Objective.mpo("phi", phi_inv="-u"), "phi_inv must be increasing but decreases"),
    (Objective.mpo("flat", phi_inv="t"), "phi_inv is constant in u"),
    (Objective.mpo("g_up", g="z"), "g must be non-increasing in the margin"),
    (Objective.free("overflow", "(logp_w**4)**4"), "loss is not finite"),
    (Objective.free("overflow2", "exp(logp_w)**4*exp(logp_l)**4"), "loss is not finite"),
    (Objective.free("no_policy", "beta*ref_w + t"), "does not depend on the policy"),
    (Objective.free("too_long", sum(safe_exp(k * SYMBOLS["logp_w"]) for k in range(1, 40))),
     "not encodable: the loss needs"),
])
def test_broken_candidates_fail_with_a_reason(objective, reason):
    verdict = check(objective)
    assert isinstance(verdict, Verdict) and not verdict.ok and not verdict
    assert reason in verdict.reason, verdict.reason


def test_a_failure_names_an_input_where_it_happens():
    verdict = check(Objective.free("overflow", "(logp_w**4)**4"))
    assert "logp_w=" in verdict.reason and "len_w=" in verdict.reason


def test_monotone_check_can_be_switched_off():
    objective = Objective.free("up", "logp_w - logp_l", monotone=False)
    verdict = check(objective)
    assert verdict.ok and verdict.stats["increasing_in_logp_w"] == 1.0


def test_check_never_raises():
    verdict = check(None)  # type: ignore[arg-type]
    assert not verdict.ok and verdict.reason.startswith("internal error")
    weird = Objective.free("weird", sympy.Integer(3) * SYMBOLS["logp_w"] ** 64)
    assert not check(weird).ok


@pytest.mark.parametrize("objective, reason", [
    (Objective.mpo("imitation_only", g="t", imitation="lam", constants={"lam": 1.0}),
     "label-blind: g does not depend on the margin"),
    (Objective.free("symmetric", "-logp_w - logp_l + (mlogp_w - mlogp_l)**2"),
     "label-blind: the loss is unchanged when chosen and rejected swap"),
])
def test_losses_that_cannot_use_the_labels_are_rejected_when_labels_are_required(objective, reason):
    assert check(objective, monotone=False).ok, "valid as a loss; only the label requirement refuses it"
    verdict = check(objective, monotone=False, labels=True)
    assert not verdict.ok and verdict.reason.startswith(reason), verdict.reason


@pytest.mark.parametrize("name", list(ZOO))
def test_every_baseline_can_use_the_labels_and_has_its_own_behaviour(name):
    verdict = check(ZOO[name].objective, labels=True)
    assert verdict.ok, verdict.reason
    others = {check(ZOO[n].objective).behaviour for n in ZOO if n != name}
    assert verdict.behaviour and verdict.behaviour not in others


def test_gradient_fingerprint_ignores_offsets_and_term_order_but_not_constants():
    dpo = check(Objective.mpo("a", g="-logsigmoid(beta*z)")).behaviour
    assert check(Objective.mpo("b", g="-logsigmoid(beta*z) + 3")).behaviour == dpo  # constant offset
    assert check(Objective.mpo("c", g="2 - logsigmoid(z*beta) - 2")).behaviour == dpo  # reordered
    assert check(Objective.mpo("d", g="-logsigmoid(beta*z)", constants={"beta": 0.5})).behaviour != dpo
    assert check(Objective.mpo("e", g="-2*logsigmoid(beta*z)")).behaviour != dpo
