"""Where a population's evaluation runs: in this process (the default) or spread over Ray workers.

An executor maps a function over chunks of a population and returns the results in order. Chunks are
``FitnessConfig.batch`` objectives, the chunks a population call trains anyway, and a candidate's
scores do not depend on its batch-mates (on CPU each candidate is its own trainer call, on an
accelerator a call padded to the batch; batch-invariant rollouts), so
the same seed gives the same archive with either executor. Ray workers (local, or a cluster's CPU or
GPU nodes through ``address``) build or read their datasets and pi_ref from their own cache.
"""

from __future__ import annotations

from typing import Callable, Sequence

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Everything in this process."""

    name = "local"
    workers = 1

    def map(self, fn: Callable, chunks: Sequence) -> list:
        return [fn(chunk) for chunk in chunks]


class RayExecutor:
    """Chunks as Ray tasks, one CPU each by default (``num_gpus`` per task on GPU nodes)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: float = 0.0):
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'mpo-discover[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self.num_gpus = num_gpus

    def map(self, fn: Callable, chunks: Sequence) -> list:
        remote = self.ray.remote(num_cpus=1, num_gpus=self.num_gpus)(fn)
        return self.ray.get([remote.remote(chunk) for chunk in chunks])


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise ValueError(f"unknown executor {name!r}; use {' or '.join(EXECUTORS)}")
