"""Marker policy: ``slow`` tests run only on request, ``gpu`` tests only where JAX sees a GPU."""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (same as MPO_RUN_SLOW=1)")


def _gpu_present() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("MPO_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="marked slow; run with --run-slow or MPO_RUN_SLOW=1")
    skip_network = pytest.mark.skip(reason="needs network access beyond package registries")
    gpu_items = [item for item in items if "gpu" in item.keywords]
    skip_gpu = None
    if gpu_items and not _gpu_present():
        skip_gpu = pytest.mark.skip(reason="needs a GPU (JAX's default backend is not gpu)")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "network" in item.keywords:
            item.add_marker(skip_network)
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
