"""GP variation over typed trees and the evolution strategy over constants."""

import numpy as np
import pytest

from discovery import gp
from discovery.es import ConstantSearch, ESConfig, to_bounded, to_unbounded
from grammar.canonical import complexity, structure_hash
from grammar.language import check_tree
from grammar.objective import Objective
from grammar.validity import check
from grammar.zoo import ZOO, baseline

PARENTS = [baseline(n) for n in ("dpo", "ipo", "hinge", "ta_mpo", "orpo", "robust_dpo")]


def _in_language(o: Objective) -> bool:
    return Objective.from_dict(o.to_dict()) == o or structure_hash(Objective.from_dict(o.to_dict())) == structure_hash(o)


@pytest.mark.parametrize("op", gp.OPERATOR_NAMES)
def test_each_operator_yields_children_inside_the_language(op):
    rng = np.random.default_rng(0)
    cfg = gp.GPConfig()
    parents = PARENTS
    if op == "simplify":  # the zoo is already simple; a bloated child is what simplify is for
        parents = [Objective.mpo("bloated", g="(z + 1)**2 - z**2 - softplus(z)*(1 + beta) + beta*softplus(z)",
                                 monotone=False)]
    made = 0
    for i in range(30):
        parent = parents[i % len(parents)]
        try:
            if op == "crossover":
                child = gp.crossover(parent, rng, cfg, "child", parents[(i + 1) % len(parents)])
            else:
                child = gp.OPERATORS_BY_NAME[op](parent, rng, cfg, "child")
        except ValueError:  # GrammarError: the operator found nothing to do on this parent
            continue
        made += 1
        for part, expr in child.parts().items():
            check_tree(expr, part if child.shape == "mpo" else "loss")
        assert _in_language(child), "a child must survive the text round trip"
    assert made >= 10, f"{op} produced only {made} children from 30 tries"


def test_vary_is_deterministic_respects_size_and_mostly_valid():
    cfg = gp.GPConfig(max_complexity=30)

    def children(seed):
        rng = np.random.default_rng(seed)
        return [gp.vary(PARENTS, rng, cfg, f"c{i}") for i in range(40)]

    a, b = children(1), children(1)
    assert [structure_hash(c) for c, _, _ in a] == [structure_hash(c) for c, _, _ in b]
    assert all(complexity(c) <= cfg.max_complexity for c, _, _ in a)
    ops = {op for _, op, _ in a}
    assert len(ops) >= 4, ops
    assert all(0 <= i < len(PARENTS) for _, _, used in a for i in used)
    valid = sum(check(c).ok for c, _, _ in a)
    assert valid >= 15, f"only {valid}/40 children pass the validity checks"
    distinct = len({structure_hash(c) for c, _, _ in a})
    assert distinct >= 20


def test_tournament_prefers_the_fit():
    rng = np.random.default_rng(0)
    fitness = np.arange(10.0)
    winners = gp.tournament(fitness, 3, 200, rng)
    assert np.mean(winners) > 6


def test_bounded_mapping_round_trips_and_stays_in_range():
    for low, high, value in ((0.01, 10.0, 0.1), (-1.0, 1.0, 0.25), (0.0, 5.0, 4.9)):
        x = to_unbounded(value, low, high)
        assert np.isclose(to_bounded(np.array(x), low, high), value, rtol=1e-3)
    xs = np.linspace(-50, 50, 101)
    ys = to_bounded(xs, 0.01, 10.0)
    assert ys.min() >= 0.01 and ys.max() <= 10.0 and np.all(np.diff(ys) >= 0)


@pytest.mark.parametrize("strategy", ["cma", "openes", "snes"])
def test_es_climbs_a_known_optimum_and_its_state_round_trips(strategy):
    dpo = baseline("dpo")
    target = 0.5
    es = ConstantSearch(dpo, ESConfig(strategy=strategy, population=8), seed=0)
    first_gap = None
    for gen in range(25):
        pop = es.ask()
        betas = np.array([o.constants["beta"] for o in pop])
        low, high = dpo.ranges["beta"]
        assert np.all((betas >= low) & (betas <= high))
        gaps = np.abs(np.log(betas / target))
        first_gap = first_gap if first_gap is not None else gaps.mean()
        es.tell([-g for g in gaps])
    final_gap = abs(np.log(es.mean_objective().constants["beta"] / target))
    assert final_gap < first_gap

    saved = es.state_bytes()
    restored = ConstantSearch(dpo, ESConfig(strategy=strategy, population=8), seed=123)
    restored.load_state_bytes(saved)
    assert [o.constants for o in es.ask()] == [o.constants for o in restored.ask()]


def test_es_ranks_failed_members_last_and_needs_constants():
    es = ConstantSearch(baseline("dpo"), ESConfig(), seed=0)
    es.ask()
    es.tell([None, 1.0, None, 2.0, 0.5, None, 1.5, 0.1])  # no exception, finite update
    assert np.all(np.isfinite(np.asarray(es.state.mean)))
    constant_free = next(b.objective for b in ZOO.values() if not b.objective.constants)
    with pytest.raises(ValueError, match="no free constants"):
        ConstantSearch(constant_free, ESConfig(), seed=0)
