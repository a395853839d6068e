"""The population PO trainer: learning, no recompilation for new objectives, failure isolation, no padding
on CPU."""

import jax.numpy as jnp
import numpy as np
import pytest

from evaluators import datasets as D
from evaluators.po_trainer import NONFINITE_LOSS, RUNNING, TrainConfig, member_steps, one_call_per_candidate, \
    train_population
from evaluators.reference import BCConfig, reference_policy
from evaluators.tasks import TASKS
from grammar.kernel import compilation_count, constant_vector, encode, interpret, stack
from grammar.zoo import baseline

HOPPER = TASKS["hopper"]
CFG = TrainConfig(steps=30, batch_pairs=16, curve_points=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("trainer")
    ds = D.build(HOPPER, "clean", seed=0, config=D.DatasetConfig(n_pairs=64, segment_length=20, max_prefix=40),
                 cache=str(cache / "ds"))
    ref = reference_policy(ds, BCConfig(steps=200), cache=str(cache / "ref"))
    return ds, ref


def population(names, constants=None):
    objs = [baseline(n) for n in names]
    programs = stack([encode(o) for o in objs])
    vecs = np.stack([constant_vector(o) for o in objs])[:, None, :] if constants is None else constants
    return programs, vecs


def test_shapes_curves_and_learning(setup):
    ds, ref = setup
    programs, consts = population(["dpo", "sft"])
    r = train_population(interpret, ds, ref, programs, consts, np.arange(3), CFG)
    assert r.params["w0"].shape == (2, 3, 1) + ref["w0"].shape
    assert r.curves["loss"].shape == (2, 3, 1, 5)
    assert list(r.curve_steps) == [6, 12, 18, 24, 30]
    assert np.all(r.stop_reason == RUNNING) and np.all(r.stopped_at == -1)
    dpo_loss = r.curves["loss"][0, :, 0]
    assert np.all(dpo_loss[:, -1] < np.log(2.0) + 1e-3), "DPO loss starts at log 2 and must go down"
    assert np.all(r.curves["margin"][0, :, 0, -1] > 0), "DPO widens the chosen-rejected margin"
    # different seeds sample different minibatches
    assert not np.allclose(r.params["w0"][0, 0, 0], r.params["w0"][0, 1, 0])


def test_new_objectives_do_not_recompile(setup):
    ds, ref = setup
    programs, consts = population(["dpo", "ipo"])
    train_population(interpret, ds, ref, programs, consts, np.arange(2), CFG)  # warm-up
    before = compilation_count()
    for names in (["hinge", "simpo"], ["ta_mpo", "robust_dpo"], ["exo_pair", "apo_zero"]):
        programs, consts = population(names)
        r = train_population(interpret, ds, ref, programs, consts, np.arange(2), CFG)
        assert np.all(r.stop_reason == RUNNING)
    assert compilation_count() == before


def test_constant_vectors_axis_trains_each_vector(setup):
    ds, ref = setup
    programs, _ = population(["dpo"])
    betas = [0.01, 0.1, 1.0]
    consts = np.stack([constant_vector({"beta": b}) for b in betas])[None]  # (1, V=3, K)
    r = train_population(interpret, ds, ref, programs, consts, np.arange(1), CFG)
    assert r.params["w0"].shape[:3] == (1, 1, 3)
    first_losses = r.curves["loss"][0, 0, :, 0]
    assert len(set(np.round(first_losses, 6))) == 3


def nan_when_beta_large(program, variables, constants):
    """The grammar never yields NaN, so failure isolation is tested with a kernel that can."""
    return jnp.where(constants[0] > 5.0, jnp.nan, interpret(program, variables, constants))


def test_nonfinite_loss_stops_only_that_member(setup):
    ds, ref = setup
    programs, _ = population(["dpo", "dpo"])
    consts = np.stack([constant_vector({"beta": 0.1}), constant_vector({"beta": 6.0})])[:, None, :]
    r = train_population(nan_when_beta_large, ds, ref, programs, consts, np.arange(2), CFG)
    assert np.all(r.stop_reason[0] == RUNNING)
    assert np.all(r.stop_reason[1] == NONFINITE_LOSS) and np.all(r.stopped_at[1] == 0)
    assert r.reasons()[1, 0, 0] == "non-finite loss"
    # the stopped member keeps pi_ref's (finite) parameters
    np.testing.assert_array_equal(r.params["w0"][1, 0, 0], ref["w0"])


def test_soft_labels_use_both_orders(tmp_path):
    ds = D.build(HOPPER, "equal:0.9", seed=0, config=D.DatasetConfig(n_pairs=32, segment_length=10, max_prefix=20),
                 cache=str(tmp_path))
    assert np.any(ds["pref"] == 0.5)
    ref = reference_policy(ds, BCConfig(steps=50), cache=str(tmp_path / "ref"))
    programs, consts = population(["dpo"])
    r = train_population(interpret, ds, ref, programs, consts, np.arange(1), TrainConfig(steps=5, curve_points=5))
    # A pair labelled 0.5 has loss (l(z) + l(-z))/2 >= log 2 at any margin z.
    assert np.all(r.curves["loss"] > 0.5)


def test_on_cpu_a_candidate_trains_alone_whatever_its_population(setup):
    """No padding on CPU: each candidate is its own call, so its result is bit for bit the same alone, among
    other batch-mates, or in a population of another size; and no member-step is padding."""
    ds, ref = setup
    assert one_call_per_candidate()  # the test suite runs on CPU
    before = member_steps()
    programs, consts = population(["dpo", "ipo", "hinge"])
    mixed = train_population(interpret, ds, ref, programs, consts, np.arange(2), CFG, pad_to=8)
    programs, consts = population(["ipo"])
    alone = train_population(interpret, ds, ref, programs, consts, np.arange(2), CFG, pad_to=8)
    for key in mixed.params:
        np.testing.assert_array_equal(mixed.params[key][1], alone.params[key][0])
    np.testing.assert_array_equal(mixed.curves["loss"][1], alone.curves["loss"][0])
    after = member_steps()
    assert after["trained"] - before["trained"] == 4 * 2 * CFG.steps
    assert after["padding"] == before["padding"]


def test_on_an_accelerator_the_population_is_one_call_padded_to_its_size(setup, monkeypatch):
    """The accelerator's path (run here on CPU): one call padded with copies of the last candidate, the
    padding trimmed from the result and counted."""
    ds, ref = setup
    monkeypatch.setattr("evaluators.po_trainer.one_call_per_candidate", lambda: False)
    programs, consts = population(["dpo", "ipo", "hinge"])
    before = member_steps()
    r = train_population(interpret, ds, ref, programs, consts, np.arange(2), CFG, pad_to=4)
    after = member_steps()
    assert r.params["w0"].shape[:3] == (3, 2, 1) and r.curves["loss"].shape[:3] == (3, 2, 1)
    assert after["trained"] - before["trained"] == 4 * 2 * CFG.steps
    assert after["padding"] - before["padding"] == 1 * 2 * CFG.steps
    assert not np.allclose(r.params["w0"][1], r.params["w0"][2])  # ipo and hinge, not a copy
