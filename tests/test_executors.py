"""Evaluation spread over Ray workers gives what the local executor gives, candidate for candidate."""

import dataclasses
import os

import pytest

from evaluators.datasets import DatasetConfig
from evaluators.executors import LocalExecutor, make_executor
from evaluators.fitness import FitnessConfig, FitnessEvaluator
from evaluators.po_trainer import TrainConfig
from evaluators.reference import BCConfig
from grammar.zoo import baseline

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mpo-discover[ray]')")

TINY = FitnessConfig(seeds=2, episodes=1, dataset=DatasetConfig(n_pairs=64, segment_length=20, max_prefix=40),
                     train=TrainConfig(steps=10, batch_pairs=16, curve_points=2), reference=BCConfig(steps=100),
                     batch=2)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    old = os.environ.get("MPO_DISCOVER_CACHE")
    os.environ["MPO_DISCOVER_CACHE"] = cache  # Ray's workers inherit it
    try:
        executor = make_executor("ray", num_cpus=2)
    except Exception as e:  # e.g. no shared memory or ports for Ray's processes on this machine
        pytest.skip(f"a local Ray cannot start here: {type(e).__name__}: {e}")
    yield executor, cache
    ray.shutdown()
    if old is None:
        del os.environ["MPO_DISCOVER_CACHE"]
    else:
        os.environ["MPO_DISCOVER_CACHE"] = old


def test_ray_workers_score_a_population_as_the_local_executor_does(local_ray):
    executor, cache = local_ray
    assert executor.workers == 2
    objectives = [baseline(n) for n in ("dpo", "ipo", "sft", "orpo", "cpl")]  # 3 chunks of 2, the last of 1
    local = FitnessEvaluator(TINY, cache, executor=LocalExecutor()).evaluate(objectives, train_seeds=(0, 1))
    spread = FitnessEvaluator(dataclasses.replace(TINY, executor="ray"), cache, executor=executor)
    remote = spread.evaluate(objectives, train_seeds=(0, 1))
    assert [e.fitness for e in remote] == [e.fitness for e in local]
    assert [e.scores for e in remote] == [e.scores for e in local]
    assert spread.pi_ref is not None


def test_unknown_executor_is_a_config_error():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        dataclasses.replace(TINY, executor="dask").validate()
