"""Behavioural descriptors: documented values on published losses, determinism, speed, errors."""
import time

import pytest

from archive.descriptors import (
    DEFAULT_DESCRIPTORS, DESCRIPTORS, DescriptorError, describe, descriptor_specs, parse_descriptor_specs,
    specs_from,
)
from archive.qd import DescriptorSpec
from grammar.canonical import complexity
from grammar.objective import Objective
from grammar.zoo import ZOO, baseline


@pytest.fixture(scope="module")
def zoo():
    return {name: describe(b.objective) for name, b in ZOO.items()}


def test_documented_values(zoo):
    assert zoo["dpo"]["saturation"] == pytest.approx(0.47, abs=0.01)
    assert zoo["hinge"]["saturation"] == 1.0  # the gradient is exactly zero past the hinge
    assert zoo["sft"]["saturation"] == 0.0 and zoo["ipo"]["saturation"] < 0.05
    for name in ("dpo", "ipo", "hinge", "cdpo", "robust_dpo", "simpo", "discopop"):  # functions of the margin
        assert zoo[name]["asymmetry"] == pytest.approx(0.5, abs=1e-6), name
    assert zoo["sft"]["asymmetry"] == 1.0
    assert 0.5 < zoo["orpo"]["asymmetry"] < 1.0 and 0.5 < zoo["ta_mpo"]["asymmetry"] < 1.0
    assert zoo["sft"]["imitation"] == pytest.approx(1.0)
    assert zoo["dpo"]["imitation"] == 0.0 and zoo["robust_dpo"]["imitation"] == 0.0
    for name in ("orpo", "cpo", "ta_mpo"):
        assert 0.0 < zoo[name]["imitation"] < 1.0, name
    for name, d in zoo.items():
        assert set(d) == set(DESCRIPTORS)
        assert d["complexity"] == complexity(ZOO[name].objective)
        assert all(0.0 <= d[n] <= 1.0 for n in ("saturation", "asymmetry", "imitation")), name


def test_saturation_grows_with_beta(zoo):
    assert describe(baseline("dpo").replace(constants={"beta": 0.3}))["saturation"] > zoo["dpo"]["saturation"]


def test_deterministic_fast_and_never_recompiles(zoo):
    from grammar.kernel import compilation_count

    before = compilation_count()
    start = time.perf_counter()
    again = {name: describe(b.objective) for name, b in ZOO.items()}
    per_call = (time.perf_counter() - start) / len(ZOO)
    assert again == zoo
    assert compilation_count() == before, "a new expression triggered a recompilation"
    assert per_call < 0.3, f"{per_call:.3f} s per objective"


def test_errors_and_subsets():
    with pytest.raises(DescriptorError, match="not finite"):  # e^50 * e^50 overflows float32
        describe(Objective.free("overflow", "exp(-logp_w)*exp(-logp_l)"))
    terms = [f"tanh(c{i % 10}*logp_w - {i}*logp_l)" for i in range(1, 20)]
    too_long = Objective.free("long", f"({' + '.join(terms[:10])}) * ({' + '.join(terms[10:])})")
    with pytest.raises(DescriptorError, match="kernel instructions"):
        describe(too_long)
    assert describe(too_long, ["complexity"]) == {"complexity": complexity(too_long)}
    with pytest.raises(KeyError, match="unknown descriptor"):
        describe(baseline("dpo"), ["colour"])


def test_grid_axes_from_text_and_config():
    assert [s.name for s in descriptor_specs()] == list(DEFAULT_DESCRIPTORS)
    assert [s.bins for s in descriptor_specs(bins={"complexity": 5})] == [5, 10]
    specs = parse_descriptor_specs("complexity=0:60:12, asymmetry")
    assert specs == [DescriptorSpec("complexity", 0, 60, 12), DESCRIPTORS["asymmetry"].spec()]
    assert specs_from(None) == descriptor_specs()
    assert specs_from([s.to_dict() for s in specs]) == specs == specs_from("complexity=0:60:12,asymmetry")
    assert specs_from(["saturation"]) == [DESCRIPTORS["saturation"].spec()]
    for bad in ("complexity=0:60", "complexity=a:1:2", ""):
        with pytest.raises(ValueError):
            parse_descriptor_specs(bad)
