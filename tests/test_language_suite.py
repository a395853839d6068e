"""The language suite: the generated language and its gold reward, the pairs and variants, the KL-budgeted
score, one tiny run end to end through TRL (deterministic), the paired table with its controls, tuning on
demand (cached), and `discover transfer`'s refusals."""

import json
import os

import numpy as np
import pytest

from evaluators.datasets import DatasetError
from evaluators.language.data import parse_lm_variant
from evaluators.language.generator import Language, LanguageConfig
from evaluators.language.training import best_of_n_kl, expected_best_of


def test_language_is_a_function_of_its_seed():
    a, b, c = Language(), Language(), Language(LanguageConfig(seed=1))
    np.testing.assert_array_equal(a.transitions, b.transitions)
    np.testing.assert_array_equal(a.value, b.value)
    assert not np.array_equal(a.transitions, c.transitions)
    np.testing.assert_allclose(a.transitions.sum(1), 1.0)
    np.testing.assert_allclose(a.stationary @ a.transitions, a.stationary, atol=1e-12)


def test_gold_reward_is_word_values_minus_the_fluency_penalty():
    lang = Language()
    prompts = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    completion = lang.sample(np.random.default_rng(0), 1, lang.cfg.completion_length, prompts[:, -1])
    prev = np.concatenate([prompts[0, -1:], completion[0, :-1]])
    off = sum(lang.transitions[p, w] < lang.cfg.rare for p, w in zip(prev, completion[0]))
    expected = lang.value[completion[0]].sum() - lang.cfg.fluency_penalty * off
    assert lang.gold(prompts, completion)[0] == pytest.approx(expected)
    spurious = np.isin(completion[0], lang.spurious).sum()
    assert lang.teacher_reward(prompts, completion)[0] == pytest.approx(expected + lang.cfg.spurious_bonus * spurious)
    # rare words are worth more: the reward pulls against likelihood
    assert np.corrcoef(lang.value, np.log(lang.stationary))[0, 1] < 0


def test_the_teacher_mostly_agrees_with_the_gold_reward_but_not_always():
    lang = Language()
    rng = np.random.default_rng(1)
    prompts = lang.prompts(rng, 4000)
    a = lang.sample(rng, 4000, 12, prompts[:, -1])
    b = lang.sample(rng, 4000, 12, prompts[:, -1])
    agree = np.mean(lang.prefer_first(rng, prompts, a, b) == (lang.gold(prompts, a) > lang.gold(prompts, b)))
    assert 0.7 < agree < 0.98


def test_variants_of_the_language_task():
    assert parse_lm_variant("noisy-0.2").spec == "noisy:0.2"
    assert parse_lm_variant("clean+shuffled").shuffled
    for bad in ("stoch:1", "myopic", "bogus"):
        with pytest.raises(DatasetError, match="language task"):
            parse_lm_variant(bad)
    with pytest.raises(DatasetError, match="outside"):
        parse_lm_variant("noisy:0.9")


def test_expected_best_of_n_is_the_order_statistics_estimator():
    rng = np.random.default_rng(2)
    gold = rng.standard_normal((3, 6))
    for n in (1, 2, 4, 6):
        # brute force: the mean of the max over every n-subset
        from itertools import combinations

        brute = np.mean([np.mean([row[list(s)].max() for s in combinations(range(6), n)]) for row in gold])
        assert expected_best_of(gold, n) == pytest.approx(brute)
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(8) == pytest.approx(np.log(8) - 7 / 8)


# -- through TRL (the lm extra) ------------------------------------------------------------------------

trl = pytest.importorskip("trl", reason="the language suite's extra (transformers, trl) is not installed")

from evaluators.language import suite as lm  # noqa: E402
from evaluators.protocol import SHUFFLED, Protocol, Setting  # noqa: E402
from grammar.zoo import baseline  # noqa: E402

ONE_UNIT = Protocol(reference_seeds=(0,), train_seeds=(7,), episodes=1, eval_seed=20_000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lm-cache"))


def _job(label, lr=1e-3, variant="clean"):
    return lm.Job(lm.TINY, variant, 1, 0, 7, 20_000, label, lm.loss_source(baseline(label)), lr)


def test_a_run_is_deterministic_and_scored_at_the_budget(cache):
    first = lm.run_job(_job("dpo"), cache)
    again = lm.run_job(_job("dpo"), cache)
    assert first["score"] == again["score"] and first["path"] == again["path"]
    assert first["final"] == again["final"]
    budget = lm.TINY.train.kl_budget
    assert first["path"] and all(kl >= 0 for _, kl in first["path"])
    assert first["at_budget"]["kl"] <= max(budget, first["final"]["kl"]) + 1e-9
    expected = 100 * (first["at_budget"]["gold"] - first["reward_ref"]) / (first["ceiling"] - first["reward_ref"])
    assert first["score"] == pytest.approx(expected)
    other = lm.run_job(_job("dpo", lr=1e-4), cache)
    assert other["final"]["kl"] < first["final"]["kl"]  # a smaller step moves less far


def test_a_non_finite_loss_stops_the_run_with_its_reason(cache):
    import torch

    from evaluators.language.training import train_and_score

    suite = lm.TINY
    language = lm._language(suite.language)
    ref = lm._reference(suite, 0, cache)
    pairs = lm._pairs(suite, "clean", 1, 0, False, cache)
    evaluation = lm._evaluation(suite, 0, 20_000, cache)
    result = train_and_score(language, ref, lm._tokenizer(suite.language), pairs.to_dataset(language),
                             lambda lw, ll, *rest: (lw - ll) * torch.tensor(float("nan")), {}, 1e-3, suite.train, 7,
                             evaluation)
    assert result.failure.startswith("non-finite loss at step 0")
    assert result.score == 0.0  # scored as pi_ref: it never moved


def test_score_table_is_paired_with_controls_and_the_oracle(cache):
    settings = [Setting("dpo", baseline("dpo"), 1e-3, 0), Setting("sft", baseline("sft"), 1e-3, 0)]
    table = lm.score_settings(settings, "clean", 1, ONE_UNIT, lm.TINY, shuffled_control=("dpo",), cache=cache, workers=1)
    assert table.labels == ["dpo", "sft", "dpo" + SHUFFLED, lm.ORACLE, "pi_ref"]
    assert table.scores.shape == (5, 1, 1)
    assert table.mean_ci("pi_ref")[0] == 0.0
    dpo = lm.run_job(_job("dpo"), cache)
    assert table.unit_scores("dpo")[0] == dpo["score"]  # the same run, wherever it ran
    twin = table.details["dpo" + SHUFFLED][0]
    assert twin["gold_agreement"] != dpo["gold_agreement"]  # the same pairs, permuted labels


def test_tuning_on_demand_is_cached(cache):
    events = []
    best = lm.tune("clean", ("dpo",), lm.TINY, cache=cache, workers=1, on_event=events.append)
    assert best["dpo"]["lr"] == 1e-3 and best["dpo"]["constants"]["beta"] == 0.1
    assert any("tuning 1 losses" in e for e in events)
    path = lm._tuned_path("clean", lm.TINY, "dpo", cache)
    with open(path) as f:
        assert json.load(f)["best"] == best["dpo"]
    events.clear()
    assert lm.tune("clean", ("dpo",), lm.TINY, cache=cache, workers=1, on_event=events.append) == best
    assert not events  # read back, nothing trained


def test_transfer_refuses_bad_input_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from discovery.cli import app

    out = tmp_path / "out"
    runner = CliRunner()
    for args, message in ((["#12345", "--archive", str(tmp_path / "none.db")], "no archive"),
                          (["logp_w +* 2"], "syntax"),
                          (["nosuchname"], "unknown name"),
                          (["dpo", "--variant", "stoch:1"], "--variant"),
                          (["dpo", "--variant", "clean+shuffled"], "shuffled twin"),
                          (["dpo", "--preset", "huge"], "--preset")):
        result = runner.invoke(app, ["transfer", *args, "--out", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert not os.path.exists(out)


def test_the_language_task_is_a_holdout_column():
    from discovery.search import parse_holdout

    assert parse_holdout("lm:clean") == ("lm", "clean")
    assert parse_holdout("lm:noisy:0.2") == ("lm", "noisy:0.2")
    for bad, message in (("lm:stoch:1", "language task"), ("lm:clean+shuffled", "shuffled")):
        with pytest.raises(ValueError, match=message):
            parse_holdout(bad)
