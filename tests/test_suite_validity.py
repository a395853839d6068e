"""The suite's validity machinery on tiny data: one action noise, labels from returns (to go), the
label-shuffle control, learning rates as data, ranking accuracy, paired scoring and the gates' figures."""

import numpy as np
import pytest

from evaluators import datasets as D
from evaluators import suite as S
from evaluators.behaviour import load_level
from evaluators.po_trainer import TrainConfig, ranking_accuracy, train_population
from evaluators.policy import policy_mean
from evaluators.protocol import Combo, Protocol, ScoreTable, Setting, score_settings
from evaluators.reference import BCConfig, best_level, reference_policy, transitions
from evaluators.tasks import TASKS
from grammar.kernel import constant_vector, encode, interpret, stack
from grammar.zoo import baseline

CHEETAH = TASKS["halfcheetah"]
HOPPER = TASKS["hopper"]
TINY = D.DatasetConfig(n_pairs=40, segment_length=25, max_prefix=30)
TINY_PROTOCOL = Protocol(reference_seeds=(0, 1), train_seeds=(3, 4), episodes=1, eval_seed=77, heldout_fraction=0.25)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("validity"))


def test_every_level_acts_with_the_experts_noise(cache):
    ds = D.build(CHEETAH, "mixed", seed=0, config=D.DatasetConfig(n_pairs=60, segment_length=30, max_prefix=20),
                 cache=cache)
    sigma = np.exp(D.behaviour_action_log_std(CHEETAH))
    for index, level in enumerate(D.ALL_LEVELS):
        params = load_level(CHEETAH, level)
        obs = np.concatenate([ds["obs_w"][ds["level_w"] == index], ds["obs_l"][ds["level_l"] == index]])
        act = np.concatenate([ds["act_w"][ds["level_w"] == index], ds["act_l"][ds["level_l"] == index]])
        mean = policy_mean(params, obs.reshape(-1, obs.shape[-1]))
        act = act.reshape(mean.shape)
        inside = np.abs(act) < 0.999  # clipping at the control limits cuts the noise off
        z = ((act - mean) / sigma)[inside]
        assert len(z) > 300
        assert 0.85 < z.std() < 1.15, (level, z.std())  # the expert's sigma, not the level's own


def test_shuffled_control_keeps_the_pairs_and_permutes_only_the_labels(cache):
    true = D.build(HOPPER, "noisy:0.1", seed=2, config=TINY, cache=cache)
    shuffled = D.build(HOPPER, "noisy:0.1+shuffled", seed=2, config=TINY, cache=cache)
    assert shuffled.variant == "noisy:0.1+shuffled" and shuffled.content_hash != true.content_hash
    # every pair holds the same two segments, in either order
    same = np.all(shuffled["obs_w"] == true["obs_w"], axis=(1, 2)) & np.all(shuffled["obs_l"] == true["obs_l"], axis=(1, 2))
    swapped = np.all(shuffled["obs_w"] == true["obs_l"], axis=(1, 2)) & np.all(shuffled["obs_l"] == true["obs_w"], axis=(1, 2))
    assert np.all(same | swapped) and swapped.any() and same.any()
    # the labels (which generated segment is chosen) are a permutation of the true ones
    np.testing.assert_array_equal(np.sort(shuffled["a_is_w"]), np.sort(true["a_is_w"]))
    np.testing.assert_array_equal(swapped, shuffled["a_is_w"] != true["a_is_w"])
    again = D.build(HOPPER, "noisy:0.1+shuffled", seed=2, config=TINY, cache=cache, rebuild=True)
    assert again.content_hash == shuffled.content_hash


def test_shuffled_spelling_and_errors():
    assert D.parse_variant("clean+shuffled") == D.Variant("clean", None, True)
    assert D.parse_variant("noisy-0.3+shuffled").spec == "noisy:0.3+shuffled"
    with pytest.raises(D.DatasetError, match="shuffled"):
        D.parse_variant("shuffled")


def test_labels_follow_return_plus_return_to_go(cache):
    config = D.DatasetConfig(n_pairs=30, segment_length=15, max_prefix=20, return_to_go=40)
    ds = D.build(HOPPER, "clean", seed=1, config=config, cache=cache)
    judged_w, judged_l = S.label_returns(ds)
    assert np.all(judged_w >= judged_l)
    ended = ds["len_w"] < config.segment_length
    assert np.all(ds["togo_w"][ended] == 0)
    assert np.all(ds["togo_w"][~ended] != 0)  # hopper earns its healthy bonus while it carries on
    assert D.statistics(ds)["label_agreement"] == 1.0


def test_split_holds_out_the_last_pairs(cache):
    ds = D.build(HOPPER, "clean", seed=0, config=TINY, cache=cache)
    train, heldout = ds.split(0.25)
    assert (train.n_pairs, heldout.n_pairs) == (30, 10)
    np.testing.assert_array_equal(heldout["obs_w"], ds["obs_w"][30:])
    assert train.content_hash != heldout.content_hash != ds.content_hash


def test_oracle_clones_the_best_level_only(cache):
    ds = D.build(HOPPER, "mixed", seed=0, config=TINY, cache=cache)
    obs, _ = transitions(ds, "best")
    best = D.ALL_LEVELS.index(best_level(ds))
    expected = sum(int(ds[f"len_{s}"][ds[f"level_{s}"] == best].sum()) for s in ("w", "l"))
    assert len(obs) == expected and best_level(ds) == "expert"


def _population(names, lrs):
    objs = [baseline(n) for n in names]
    return stack([encode(o) for o in objs]), np.stack([constant_vector(o) for o in objs])[:, None, :], \
        np.asarray(lrs, np.float32)[:, None]


def test_learning_rate_is_data_and_matches_a_fixed_rate(cache):
    ds = D.build(HOPPER, "clean", seed=0, config=TINY, cache=cache)
    ref = reference_policy(ds, BCConfig(steps=50), cache=cache)
    cfg = TrainConfig(steps=10, batch_pairs=8, curve_points=2, lr=1e-3)
    programs, consts, lrs = _population(["dpo", "dpo", "sft"], [1e-3, 0.0, 3e-3])
    out = train_population(interpret, ds, ref, programs, consts, np.arange(2), cfg, learning_rates=lrs)
    alone = train_population(interpret, ds, ref, programs, consts, np.arange(2), cfg)
    np.testing.assert_allclose(out.params["w0"][0], alone.params["w0"][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.params["w0"][1, :, 0], np.broadcast_to(ref["w0"], out.params["w0"][1, :, 0].shape))
    assert not np.allclose(out.params["w0"][2], alone.params["w0"][2])


def test_ranking_accuracy_of_reference_and_of_a_policy_that_prefers_the_chosen(cache):
    ds = D.build(HOPPER, "clean", seed=0, config=TINY, cache=cache)
    ref = reference_policy(ds, BCConfig(steps=50), cache=cache)
    batch = {k: np.stack([v, v]) for k, v in ref.items()}
    np.testing.assert_array_equal(ranking_accuracy(batch, ref, ds), [0.5, 0.5])  # log-ratio 0: ties
    sft = reference_policy(ds, BCConfig(steps=300, source="chosen"), cache=cache)
    accuracy = ranking_accuracy({k: v[None] for k, v in sft.items()}, ref, ds)
    assert accuracy.shape == (1,) and 0.5 < accuracy[0] <= 1.0


@pytest.fixture(scope="module")
def table(cache):
    combo = Combo(HOPPER, "clean", 0, TINY, TINY_PROTOCOL, BCConfig(steps=50), cache)
    settings = [Setting("dpo", baseline("dpo"), 1e-3, 5), Setting("sft", baseline("sft"), 1e-3, 5),
                Setting("dpo-still", baseline("dpo"), 0.0, 5)]
    return combo, score_settings(combo, settings, TrainConfig(steps=5, batch_pairs=8, curve_points=1), batch=2)


def test_score_table_is_paired_over_units(table):
    combo, t = table
    assert t.labels == ["dpo", "sft", "dpo-still", "pi_ref", "oracle"]
    assert t.units == [(0, 3), (0, 4), (1, 3), (1, 4)] and t.scores.shape == (5, 4, 1)
    # pi_ref and the oracle repeat over training seeds; a loss with lr 0 IS pi_ref, unit by unit
    ref = t.unit_scores("pi_ref")
    assert ref[0] == ref[1] and ref[2] == ref[3]
    np.testing.assert_allclose(t.unit_scores("dpo-still"), ref)
    assert t.paired("dpo-still", "pi_ref") == (0.0, 0.0)
    assert np.isnan(t.ranking[t.index("pi_ref")]).all() and np.all(t.ranking[t.index("dpo-still")] == 0.5)
    alone = score_settings(combo, [Setting("dpo", baseline("dpo"), 1e-3, 5)],
                           TrainConfig(steps=5, batch_pairs=8, curve_points=1), policy_rows=(), batch=2)
    assert alone.labels == ["dpo"]
    np.testing.assert_array_equal(alone.scores[0], t.scores[0])  # the same units, seeds and episodes
    merged = ScoreTable.merge([t, ScoreTable("x", ["other"], t.units, t.scores[:1], t.returns[:1], t.ranking[:1])])
    assert merged.labels[-1] == "other" and merged.scores.shape[0] == 6


def test_shuffled_combo_shares_pi_ref_with_its_true_labels(table, cache):
    combo, _ = table
    shuffled = combo.with_variant("clean+shuffled", TINY)
    assert shuffled.variant.shuffled and shuffled.train.content_hash != combo.train.content_hash
    for a, b in zip(shuffled.references, combo.references):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_gate_figures_on_constructed_pairs():
    arrays = {"ret_w": np.array([10.0, 8.0, 5.0, 6.0]), "ret_l": np.array([5.0, 8.0, 6.0, 2.0]),
              "togo_w": np.zeros(4, np.float32), "togo_l": np.zeros(4, np.float32),
              "level_w": np.array([3, 2, 2, 3]), "level_l": np.array([2, 2, 3, 2]),
              "len_w": np.full(4, 5), "len_l": np.full(4, 5), "pref": np.ones(4, np.float32)}
    ds = D.PreferenceDataset("hopper", "clean", 0, D.DatasetConfig(n_pairs=4, segment_length=5), arrays, "h")
    figures = S.label_figures(ds)
    assert figures["relative_return_gap"] == pytest.approx(np.mean([5, 0, 1, 4]) / np.mean([7.5, 8, 5.5, 4]))
    assert figures["better_level_chosen"] == pytest.approx(2 / 3)
    assert S._above((12.0, 1.5), 10.0) and not S._above((12.0, 13.0), 10.0) and not S._above((9.0, 1.0), 10.0)


def test_tuning_grid_covers_learning_rate_steps_and_the_main_constant():
    dpo = S.grid("dpo", baseline("dpo"))
    assert len(dpo) == len(S.GRID_LR) * len(S.GRID_STEPS) * len(S.GRID_CONSTANT["beta"])
    assert {s.objective.constants["beta"] for s in dpo} == set(S.GRID_CONSTANT["beta"])
    assert {(s.lr, s.steps) for s in dpo} == {(lr, st) for lr in S.GRID_LR for st in S.GRID_STEPS}
    assert S.main_constant(baseline("orpo")) == "lam" and S.main_constant(baseline("sft")) is None
    assert len(S.grid("sft", baseline("sft"))) == len(S.GRID_LR) * len(S.GRID_STEPS)


def test_default_suite_has_a_reason_for_every_task_left_out():
    assert S.DEFAULT_TASKS and all(not S.SUITE[t].excluded for t in S.DEFAULT_TASKS)
    assert all(s.excluded for name, s in S.SUITE.items() if name not in S.DEFAULT_TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        S.task_suite("humanoid")


def test_a_dataset_of_an_older_format_is_rebuilt_not_misread(tmp_path):
    import json

    from safetensors.numpy import save_file

    ds = D.build(HOPPER, "clean", seed=5, config=TINY, cache=str(tmp_path))
    meta = {"task": "hopper", "variant": "clean", "seed": 5, "config": {"n_pairs": 40}, "format": 1,
            "content_hash": D.content_hash(ds.arrays)}
    save_file(ds.arrays, ds.path, metadata={"meta": json.dumps(meta)})
    with pytest.raises(D.DatasetError, match="format 1"):
        D.load(ds.path)
    events = []
    again = D.build(HOPPER, "clean", seed=5, config=TINY, cache=str(tmp_path), on_event=events.append)
    assert events and again.content_hash == ds.content_hash and D.load(ds.path).config == TINY


def test_tuned_settings_come_from_the_cache_then_from_the_shipped_files(tmp_path, monkeypatch):
    import json
    import os

    def no_training(*args, **kwargs):
        raise AssertionError("tuning ran although stored settings match")

    monkeypatch.setattr(S, "Combo", no_training)
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    shipped.mkdir()
    monkeypatch.setattr(S, "SHIPPED_TUNED", str(shipped))
    best = {n: {"label": f"{n}|lr=0.001|steps=300", "lr": 1e-3, "steps": 300, "constants": {},
                "validation_score": 70.0} for n in S.REPORTED_LOSSES}
    for n in S.REPORTED_LOSSES:
        path = S._tuned_path("halfcheetah", "clean", S.SUITE["halfcheetah"], n, str(cache))
        (shipped / os.path.basename(path)).write_text(json.dumps({"best": best[n]}))
    assert S.tune("halfcheetah", "clean", cache=str(cache)) == best
    assert S.tune("halfcheetah", "clean", ("dpo",), cache=str(cache)) == {"dpo": best["dpo"]}
    cache.mkdir()
    mine = {**best["sft"], "lr": 3e-4}
    with open(S._tuned_path("halfcheetah", "clean", S.SUITE["halfcheetah"], "sft", str(cache)), "w") as f:
        json.dump({"best": mine}, f)
    assert S.tune("halfcheetah", "clean", cache=str(cache))["sft"] == mine  # the cache comes first
    other = S._tuned_path("halfcheetah", "mixed", S.SUITE["halfcheetah"], "sft", str(cache))
    assert os.path.basename(other) != os.path.basename(path)  # other inputs, other file: never reused


def test_tuning_on_demand_tunes_only_the_missing_losses_and_caches_them(tmp_path, monkeypatch):
    """A loss not stored is tuned (its grid only), written, and read back the next time without training."""
    import json
    import os

    monkeypatch.setattr(S, "SHIPPED_TUNED", str(tmp_path / "shipped"))
    cache = str(tmp_path / "cache")
    stored = {"label": "dpo|lr=0.001|steps=300", "lr": 1e-3, "steps": 300, "constants": {"beta": 0.1},
              "validation_score": 50.0}
    path = S._tuned_path("halfcheetah", "clean", S.SUITE["halfcheetah"], "dpo", cache)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"best": stored}, f)
    trained = []

    class FakeTable:  # scores rise with the learning rate: the grid's largest wins
        failures = {}

        def __init__(self, settings):
            self.by_label = {s.label: (s.lr * 1000, 1.0) for s in settings}

        def mean_ci(self, label):
            return self.by_label[label]

    def score_settings(combo, settings, train, policy_rows=()):
        trained.extend(settings)
        return FakeTable(settings)

    monkeypatch.setattr(S, "Combo", lambda *a, **k: None)
    monkeypatch.setattr(S, "score_settings", score_settings)
    best = S.tune("halfcheetah", "clean", ("dpo", "apo_zero"), cache=cache)
    assert {s.label.split("|")[0] for s in trained} == {"apo_zero"}  # dpo was stored
    assert best["dpo"] == stored and best["apo_zero"]["lr"] == max(S.GRID_LR)
    trained.clear()
    assert S.tune("halfcheetah", "clean", ("apo_zero",), cache=cache) == {"apo_zero": best["apo_zero"]}
    assert not trained  # cached


def test_reference_stability_scores_the_protocols_pi_ref_and_more_seeds(table):
    combo, t = table
    scores = S.reference_stability(combo, seeds=(0, 1, 2))
    pi_ref = t.unit_scores("pi_ref")  # units (0, 3), (0, 4), (1, 3), (1, 4): pi_ref seeds 0 and 1
    np.testing.assert_allclose(scores[:2], [pi_ref[0], pi_ref[2]])
    gate = S.stability_gate(np.array([60.0, 62.0, 58.0, 61.0, 59.0]), 12.0, 5)
    assert gate.passed and gate.figure == pytest.approx(2.776 * np.std([60, 62, 58, 61, 59], ddof=1) / 5 ** 0.5, 1e-3)
    assert not S.stability_gate(np.array([40.0, 80.0, 60.0]), 1.0, 5).passed


def test_front_door_scores_a_loss_with_its_controls(monkeypatch, cache):
    from discovery import api

    assert api.loss("dpo") == baseline("dpo") and api.loss(baseline("ipo")) == baseline("ipo")
    mine = api.loss("-logsigmoid(beta*(logp_w - ref_w - logp_l + ref_l))", "mine", {"beta": 0.5})
    assert mine.constants == {"beta": 0.5}
    monkeypatch.setitem(S.SUITE, "hopper", S.TaskSuite("hopper", TINY, BCConfig(steps=50),
                                                      TrainConfig(steps=5, batch_pairs=8, curve_points=1)))
    t = api.score({"mine": mine, "sft": api.Setting("x", baseline("sft"), 1e-3, 5)}, "hopper", "clean",
                  protocol=TINY_PROTOCOL, data_seed=0, cache=cache)
    assert t.labels == ["mine", "sft", "pi_ref", "oracle", "mine [shuffled]", "sft [shuffled]"]
    assert t.scores.shape == (6, 4, 1) and np.isfinite(t.paired("mine", "mine [shuffled]")[0])
    alone = api.score({"mine": mine}, "hopper", "clean", protocol=TINY_PROTOCOL, data_seed=0, cache=cache,
                      shuffled_control=False)
    assert alone.labels == ["mine", "pi_ref", "oracle"]
    np.testing.assert_array_equal(alone.scores[0], t.scores[0])
    with pytest.raises(ValueError, match="unknown task"):
        api.score({"mine": mine}, "humanoid")


def test_references_fitted_side_by_side_equal_those_fitted_one_at_a_time(tmp_path):
    from evaluators.reference import reference_policies

    ds = D.build(HOPPER, "clean", seed=0, config=TINY, cache=str(tmp_path / "data"))
    cfgs = [BCConfig(steps=50, seed=s) for s in (0, 1, 2)]
    together = reference_policies(ds, cfgs, str(tmp_path / "together"))
    alone = [reference_policy(ds, c, str(tmp_path / "alone")) for c in cfgs]
    for a, b in zip(together, alone):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(together[0]["w0"], together[1]["w0"])
