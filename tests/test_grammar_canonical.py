"""Canonical form, structural hash, complexity and behaviour fingerprint."""
import time

import pytest
import sympy
from hypothesis import HealthCheck, given, settings

from grammar.canonical import canonical_form, complexity, fingerprint, structure_hash
from grammar.objective import Objective
from grammar.parser import parse
from grammar.testing import expressions
from grammar.zoo import ZOO

SAME = [
    ("logp_w + logp_l", "logp_l + logp_w"),
    ("2*logp_w", "logp_w + logp_w"),
    ("beta*(logp_w - logp_l)", "beta*logp_w - logp_l*beta"),
    ("softplus(-beta*(logp_w - ref_w - logp_l + ref_l))",
     "-logsigmoid(beta*(logp_w - ref_w) - beta*(logp_l - ref_l))"),
    ("1 - sigmoid(logp_w - logp_l)", "sigmoid(logp_l - logp_w)"),
    ("relu(1 - beta*logp_w)", "max(0, 1 - beta*logp_w)"),
    ("(logp_w - logp_l)**2", "logp_w**2 - 2*logp_w*logp_l + logp_l**2"),
    ("logp_w*logp_w", "square(logp_w)"),
    ("tanh(-logp_w)", "-tanh(logp_w)"),
    ("c0*logp_w + c1*exp(c0*logp_l)", "c4*logp_w + c2*exp(c4*logp_l)"),
    ("min(logp_w, logp_l)", "min(logp_l, logp_w)"),
    ("0.5*logp_w", "logp_w/2"),
    ("exp(logp_w)*(1 + logp_l)", "exp(logp_w) + logp_l*exp(logp_w)"),
]
DIFFERENT = [
    ("logp_w - logp_l", "logp_l - logp_w"),
    ("exp(logp_w)", "exp(logp_l)"),
    ("log(1 + logp_w)", "log1p(logp_w)"),  # different guards: not the same function near -1
    ("beta*logp_w", "gamma*logp_w"),
    ("c0*logp_w + c1*logp_l", "c0*logp_w + c0*logp_l"),
    ("sigmoid(logp_w)*2", "1 + tanh(logp_w/2)"),  # equal as functions, not as structures
]


@pytest.mark.parametrize("a, b", SAME)
def test_the_same_loss_written_two_ways_has_one_hash(a, b):
    assert canonical_form(parse(a)) == canonical_form(parse(b))
    assert structure_hash(parse(a)) == structure_hash(parse(b))
    assert complexity(parse(a)) == complexity(parse(b))


@pytest.mark.parametrize("a, b", DIFFERENT)
def test_different_structures_have_different_hashes(a, b):
    assert structure_hash(parse(a)) != structure_hash(parse(b))


def test_structured_and_free_dpo_are_the_same_loss():
    mpo = ZOO["dpo"].objective
    free = Objective.free("dpo_free", "softplus(beta*(logp_l - ref_l) - beta*(logp_w - ref_w))")
    assert structure_hash(mpo) == structure_hash(free)
    assert fingerprint(mpo) == fingerprint(free)


def test_hash_is_a_stable_sha256_of_the_tree_and_ignores_constant_values():
    dpo = ZOO["dpo"].objective
    digest = structure_hash(dpo)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert structure_hash(dpo.replace(constants={"beta": 0.5})) == digest
    assert fingerprint(dpo.replace(constants={"beta": 0.5})) != fingerprint(dpo)


def test_fingerprint_equates_numerically_identical_losses_only():
    two_sigmoid = Objective.free("a", "2*sigmoid(logp_w - logp_l)")
    one_plus_tanh = Objective.free("b", "1 + tanh((logp_w - logp_l)/2)")
    assert structure_hash(two_sigmoid) != structure_hash(one_plus_tanh)
    assert fingerprint(two_sigmoid) == fingerprint(one_plus_tanh)
    assert fingerprint(two_sigmoid) != fingerprint(Objective.free("c", "2*sigmoid(logp_w - logp_l) + 1e-3"))
    fingerprints = {fingerprint(b.objective) for b in ZOO.values()}
    assert len(fingerprints) == len(ZOO)


def test_complexity_weights_operators():
    assert complexity(parse("logp_w")) == 1
    assert complexity(parse("logp_w + logp_l")) == 3
    assert complexity(parse("exp(logp_w)")) == 3
    assert complexity(parse("log1mexp(logp_w)")) == 4
    assert complexity(ZOO["dpo"].objective) < complexity(ZOO["discopop"].objective)


def test_expansion_is_bounded():
    big = parse("((logp_w + logp_l + ref_w + ref_l)*(mlogp_w + mlogp_l + mref_w + mref_l)"
                "*(len_w + len_l + t + beta))**4")
    start = time.perf_counter()
    form = canonical_form(big)
    assert time.perf_counter() - start < 2.0
    assert sympy.count_ops(form) < 1000  # fully expanded it would have 35**3 terms


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=expressions(max_leaves=4), b=expressions(max_leaves=4), c=expressions(max_leaves=3))
def test_distributing_a_product_keeps_the_hash(a, b, c):
    assert structure_hash(c * (a + b)) == structure_hash(c * a + c * b)
    assert structure_hash(a + b + c) == structure_hash(c + (b + a))
