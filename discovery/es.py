"""Evolution strategies over the free constants of one objective structure (evosax, ask/tell).

Constants live in bounded ranges; the strategy searches an unconstrained space mapped onto each range
by a logistic (on a log scale for strictly positive ranges spanning more than a decade), so every
proposal is in range by construction. A whole ES population trains in ONE population-kernel call (the
trainer's constant-vector axis). evosax minimises: fitness is negated; a failed member ranks worst.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from grammar.objective import Objective

STRATEGIES = ("cma", "openes", "snes")


@dataclass(frozen=True)
class ESConfig:
    strategy: str = "cma"
    population: int = 8
    generations: int = 3
    std_init: float = 0.5


def _log_scaled(low: float, high: float) -> bool:
    return low > 0 and high / low > 10


def to_unbounded(value: float, low: float, high: float) -> float:
    if _log_scaled(low, high):
        value, low, high = np.log(value), np.log(low), np.log(high)
    frac = np.clip((value - low) / (high - low), 1e-4, 1 - 1e-4)
    return float(np.log(frac / (1 - frac)))


def to_bounded(x: np.ndarray, low: float, high: float) -> np.ndarray:
    frac = 1.0 / (1.0 + np.exp(-x))
    if _log_scaled(low, high):
        value = np.exp(np.log(low) + frac * (np.log(high) - np.log(low)))
    else:
        value = low + frac * (high - low)
    return np.clip(value, low, high)  # exp(log(high)) can round above high


def _strategy(cfg: ESConfig, dim: int):
    from evosax.algorithms import CMA_ES, SNES, Open_ES

    solution = jnp.zeros(dim)
    if cfg.strategy == "cma":
        return CMA_ES(population_size=cfg.population, solution=solution)
    if cfg.strategy == "snes":
        return SNES(population_size=cfg.population, solution=solution)
    if cfg.strategy == "openes":
        import optax

        if cfg.population % 2:
            raise ValueError("OpenES needs an even population")
        return Open_ES(population_size=cfg.population, solution=solution,
                       std_schedule=optax.constant_schedule(cfg.std_init), optimizer=optax.adam(0.1))
    raise ValueError(f"unknown ES strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")


class ConstantSearch:
    """Ask/tell over the constants of ``objective``; state is explicit (evosax's)."""

    def __init__(self, objective: Objective, cfg: ESConfig, seed: int):
        if not objective.constants:
            raise ValueError(f"{objective.name} has no free constants to tune")
        self.objective = objective
        self.cfg = cfg
        self.names = sorted(objective.constants)
        self.ranges = [objective.ranges[n] for n in self.names]
        self.es = _strategy(cfg, len(self.names))
        self.params = self.es.default_params
        if cfg.strategy == "cma":
            self.params = self.params.replace(std_init=cfg.std_init)
        mean = jnp.array([to_unbounded(objective.constants[n], *r) for n, r in zip(self.names, self.ranges)])
        self.key = jax.random.PRNGKey(seed)
        self.key, sub = jax.random.split(self.key)
        self.state = self.es.init(sub, mean, self.params)
        self._population = None

    def _objectives(self, xs: np.ndarray, tag: str) -> list[Objective]:
        out = []
        for i, x in enumerate(xs):
            values = {n: float(to_bounded(x[j], *self.ranges[j])) for j, n in enumerate(self.names)}
            out.append(self.objective.replace(name=f"{self.objective.name}~{tag}{i}", constants=values))
        return out

    def ask(self, tag: str = "es") -> list[Objective]:
        self.key, sub = jax.random.split(self.key)
        pop, self.state = self.es.ask(sub, self.state, self.params)
        self._population = pop
        return self._objectives(np.asarray(pop), tag)

    def tell(self, fitness: list[float | None]) -> None:
        f = np.array([np.nan if v is None else v for v in fitness], np.float32)
        worst = np.nanmin(f) - 1.0 if np.isfinite(f).any() else 0.0
        loss = -np.where(np.isfinite(f), f, worst)
        self.key, sub = jax.random.split(self.key)
        self.state, _ = self.es.tell(sub, self._population, jnp.asarray(loss), self.state, self.params)

    def state_bytes(self) -> bytes:
        """The strategy state, PRNG key and pending population as safetensors bytes (no pickle)."""
        from safetensors.numpy import save

        population = self._population if self._population is not None else self._empty_population()
        leaves = jax.tree.leaves((self.key, self.state, population))
        return save({f"{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})

    def load_state_bytes(self, data: bytes) -> None:
        """Restore what `state_bytes` saved (same objective and config)."""
        from safetensors.numpy import load

        arrays = load(data)
        template = (self.key, self.state, self._empty_population())
        leaves, treedef = jax.tree.flatten(template)
        if len(arrays) != len(leaves):
            raise ValueError("saved ES state does not match this strategy")
        restored = [jnp.asarray(arrays[f"{i}"], leaf.dtype) for i, leaf in enumerate(leaves)]
        self.key, self.state, self._population = jax.tree.unflatten(treedef, restored)

    def _empty_population(self):
        return jnp.zeros((self.cfg.population, len(self.names)))

    def mean_objective(self) -> Objective:
        return self._objectives(np.asarray(self.state.mean)[None], "mean")[0]
