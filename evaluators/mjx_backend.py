"""MJX backend: the native backend's rollouts as one jit-compiled, vmapped JAX function.

A rollout is compiled once per (task, batch shape, horizon, deterministic) and kept in a
module-level cache; policy parameters, start states and the PRNG key are arguments of the compiled
function, so scoring new policies of the same shape never recompiles. JAX's persistent compilation
cache is switched on (the user's ``jax_compilation_cache_dir`` if set, else ``<cache root>/jax``),
so a new process loads the executable from disk instead of compiling it again. Observation, reward
and termination are the task's own functions (``xp=jax.numpy``), so both backends share one
definition.

Each control step sets ``ctrl``, takes ``frame_skip`` physics steps and, for tasks whose observation
reads contact forces (Ant), computes ``cfrc_ext`` post-constraint as Gymnasium does. Two MJX
details are aligned with MuJoCo C so that the backends simulate the same system:

- ``mjx.forward`` writes normalised quaternions back into ``qpos``; C (and so Gymnasium) keeps the
  state as set, so the reset observation restores the given ``qpos``.
- MJX's plane-capsule collision replaces the contact's first tangent by a fixed axis when the
  capsule is within 30 degrees of the plane normal; C always uses the capsule axis projected on the
  plane. Under the pyramidal friction cone of these models the tangent orients the pyramid, so
  Ant's near-vertical shins got different friction forces from their first ground contact on.
  ``_plane_capsule`` (installed into MJX's collision table on first use) follows C.

MJX runs in JAX's default float32 (float64 under ``jax.enable_x64``). In float64 it reproduces the
native backend to round-off; in float32 the two agree closely over short horizons and then drift
apart, as contact-rich locomotion amplifies rounding differences (tests/test_backends.py states
the measured bounds). Matmuls are traced at "highest" precision so that TF32 on recent GPUs does not
degrade the physics.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from evaluators.errors import SuiteError
from evaluators.paths import cache_root
from evaluators.native import Rollout
from evaluators.policy import ACTION_LIMIT, n_layers, policy_mean
from evaluators.tasks import MAX_EPISODE_STEPS, Task

_lock = threading.RLock()
_models: dict[tuple[str, str, str], object] = {}  # (model file, platform, float dtype) -> mjx.Model
_rollouts: dict[tuple, jax.stages.Compiled] = {}
_step_fns: dict[Task, tuple] = {}
_compilations = 0
_cache_configured = False
_mjx_module = None
_last_dtype = None


class MJXInputError(SuiteError):
    pass


# -- MJX import and its one correction ---------------------------------------------------------

def _plane_capsule(plane, cap):
    """Two plane-capsule contacts with MuJoCo C's frame (``mjc_PlaneCapsule`` + ``mju_makeFrame``)."""
    from mujoco.mjx._src.collision_primitive import _plane_sphere

    n, axis = plane.mat[:, 2], cap.mat[:, 2]
    tangent = axis - n * jnp.dot(n, axis)
    norm = jnp.linalg.norm(tangent)
    degenerate = norm < 1e-15  # mju_normalize3's fallback for a capsule along the normal
    unit_x = jnp.array([1.0, 0.0, 0.0], n.dtype)
    tangent = jnp.where(degenerate, unit_x, tangent / jnp.where(degenerate, 1.0, norm))
    frame = jnp.stack([n, tangent, jnp.cross(n, tangent)])[None]
    segment = axis * cap.size[1]
    contacts = [_plane_sphere(n, plane.pos, cap.pos + offset, cap.size[0]) for offset in (segment, -segment)]
    dist = jnp.stack([c[0] for c in contacts])
    pos = jnp.stack([c[1] for c in contacts])
    return dist, pos, jnp.concatenate([frame, frame])


def _install_plane_capsule() -> None:
    try:
        from mujoco.mjx._src import collision_driver, collision_primitive
        from mujoco.mjx._src.types import GeomType

        key = (GeomType.PLANE, GeomType.CAPSULE)
        if key not in collision_driver._COLLISION_FUNC:
            raise AttributeError("no plane-capsule collider")
        collision_driver._COLLISION_FUNC[key] = collision_primitive.collider(ncon=2)(_plane_capsule)
    except (ImportError, AttributeError) as e:  # another MJX layout: keep its own collider
        warnings.warn(f"MJX plane-capsule contact frames left as MJX computes them ({e}); "
                      "MJX and native rollouts may differ after ground contact", stacklevel=3)


def _mjx():
    """Import MJX (silencing its stdout notice about the optional Warp backend), corrected once."""
    global _mjx_module
    with _lock:
        if _mjx_module is None:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                from mujoco import mjx
            _install_plane_capsule()
            _mjx_module = mjx
        return _mjx_module


# -- compilation cache ---------------------------------------------------------------------------

def persistent_cache_dir() -> str:
    """Where compiled rollouts persist: the user's JAX setting, else ``<cache root>/jax``."""

    return jax.config.jax_compilation_cache_dir or os.path.join(cache_root(), "jax")


def enable_persistent_cache() -> None:
    """Use JAX's on-disk compilation cache, in the user's directory if one is configured."""
    global _cache_configured
    with _lock:
        if _cache_configured:
            return
        _cache_configured = True
        if jax.config.jax_compilation_cache_dir:
            return
        from jax.experimental.compilation_cache import compilation_cache

        path = persistent_cache_dir()
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # the cache only saves time: run without it
            warnings.warn(f"JAX compilation cache disabled, cannot create {path}: {e}", stacklevel=3)
            return
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        # JAX decides once per process whether the cache is in use, at its first compilation; if
        # something compiled before this point that decision was "no", so make it decide again.
        compilation_cache.reset_cache()


def _float_dtype():
    """JAX's default float: float32, or float64 under ``jax.enable_x64``."""
    global _last_dtype
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    if _last_dtype is not None and dtype != _last_dtype:
        # JAX reuses traces of MJX's inner jits across an enable_x64 switch and then fails to lower
        # them ("operand type mismatch"), so a change of precision starts from empty caches.
        jax.clear_caches()
    _last_dtype = dtype
    return dtype


def compilation_count() -> int:
    """Rollout functions compiled in this process: one per new shape (and per reload after
    ``forget_compiled``, served from the persistent cache when possible)."""
    return _compilations


def forget_compiled() -> None:
    """Drop the compiled rollouts held in memory; the next call recompiles or loads from disk."""
    with _lock:
        _rollouts.clear()


def mjx_model(task: Task):
    """The task's model on JAX's default device (cached)."""
    key = (task.xml_file, jax.default_backend(), str(_float_dtype()))
    with _lock:
        if key not in _models:
            _models[key] = _mjx().put_model(task.load_model(), impl="jax")
        return _models[key]


# -- one environment -----------------------------------------------------------------------------

def _observe(task: Task, d):
    return task.observe(jnp, d.qpos, d.qvel, d._impl.cfrc_ext)


def _reset(task: Task, m, qpos, qvel):
    """Gymnasium's ``set_state``: fresh data, set the state, forward; ``qpos`` kept as given."""
    mjx = _mjx()
    d = mjx.make_data(m).replace(qpos=qpos, qvel=qvel)
    d = mjx.forward(m, d).replace(qpos=qpos)
    return d, _observe(task, d)


def _step(task: Task, m, d, action):
    """One control step: (data, observation, reward, terminated)."""
    mjx = _mjx()
    x_before = task.forward_position(d.qpos, d.xpos[1])
    d = d.replace(ctrl=action)
    d = jax.lax.fori_loop(0, task.frame_skip, lambda _, d: mjx.step(m, d), d)
    if task.uses_contact_forces:
        d = mjx.rne_postconstraint(m, d)
    x_after = task.forward_position(d.qpos, d.xpos[1])
    healthy = task.healthy(jnp, d.qpos, d.qvel)
    reward = task.reward(jnp, x_before, x_after, action, healthy, task.contact_cost(jnp, d._impl.cfrc_ext))
    return d, _observe(task, d), reward, task.terminated(jnp, healthy)


def _single_env_fns(task: Task):
    with _lock:
        if task not in _step_fns:
            _step_fns[task] = (jax.jit(functools.partial(_reset, task)),
                               jax.jit(functools.partial(_step, task)))
        return _step_fns[task]


def mjx_reset(task: Task, qpos, qvel):
    """Data and observation of one environment put in state (qpos, qvel)."""
    enable_persistent_cache()
    reset, _ = _single_env_fns(task)
    m = mjx_model(task)
    with jax.default_matmul_precision("highest"):
        return reset(m, jnp.asarray(qpos, _float_dtype()), jnp.asarray(qvel, _float_dtype()))


def mjx_step_fn(task: Task):
    """Jitted ``(data, action) -> (data, observation, reward, terminated)`` for one environment."""
    enable_persistent_cache()
    _, step = _single_env_fns(task)
    m = mjx_model(task)

    def step_fn(d, action):
        with jax.default_matmul_precision("highest"):
            return step(m, d, jnp.asarray(action, _float_dtype()))

    return step_fn


# -- batched rollouts ----------------------------------------------------------------------------

def _rollout(task: Task, horizon: int, deterministic: bool, m, params, policy_index, qpos0, qvel0, key):
    d, obs = jax.vmap(functools.partial(_reset, task, m))(qpos0, qvel0)
    theta = jax.tree.map(lambda a: a[policy_index], params)  # each env's own policy
    mean_fn = jax.vmap(lambda p, o: policy_mean(p, o, jnp))
    step = jax.vmap(functools.partial(_step, task, m))
    B = policy_index.shape[0]

    def body(carry):
        t, d, obs, alive, returns, lengths, terminated = carry
        action = mean_fn(theta, obs)
        if not deterministic:
            noise = jax.random.normal(jax.random.fold_in(key, t), action.shape, action.dtype)
            action = action + jnp.exp(theta["log_std"]) * noise
        action = jnp.clip(action, -ACTION_LIMIT, ACTION_LIMIT)
        d_next, obs_next, reward, term = step(d, action)
        # Finished envs keep their final state, so nothing non-finite can leak from them.
        d = jax.tree.map(lambda new, old: jnp.where(alive.reshape((B,) + (1,) * (new.ndim - 1)), new, old),
                         d_next, d)
        obs = jnp.where(alive[:, None], obs_next, obs)
        returns = returns + jnp.where(alive, reward, 0.0)
        lengths = lengths + alive
        terminated = terminated | (alive & term)
        return t + 1, d, obs, alive & ~term, returns, lengths, terminated

    def cond(carry):
        t, alive = carry[0], carry[3]
        return (t < horizon) & jnp.any(alive)

    init = (jnp.int32(0), d, obs, jnp.ones(B, bool), jnp.zeros(B, obs.dtype), jnp.zeros(B, jnp.int32),
            jnp.zeros(B, bool))
    _, _, _, _, returns, lengths, terminated = jax.lax.while_loop(cond, body, init)
    return returns, lengths, terminated


def _compiled_rollout(task: Task, m, args, horizon: int, deterministic: bool):
    global _compilations
    params, policy_index = args[0], args[1]
    key = (task, jax.default_backend(), str(_float_dtype()), policy_index.shape[0],
           tuple(sorted((k, v.shape) for k, v in params.items())), horizon, deterministic)
    with _lock:
        if key not in _rollouts:
            fn = jax.jit(functools.partial(_rollout, task, horizon, deterministic))
            with jax.default_matmul_precision("highest"):
                _rollouts[key] = fn.lower(m, *args).compile()
            _compilations += 1
        return _rollouts[key]


def _check_params(task: Task, params: dict) -> int:
    """Number of policies P in ``params``; MJXInputError when they cannot drive ``task``."""
    if not isinstance(params, dict):
        raise MJXInputError("params must be a dict of stacked policy arrays")
    required = {"obs_mean", "obs_std", "w0", "b0", "log_std"}
    missing = sorted(required - params.keys())
    if missing:
        raise MJXInputError(f"params lack {', '.join(missing)}")
    arrays = {k: np.asarray(v) for k, v in params.items()}
    P = arrays["log_std"].shape[0] if arrays["log_std"].ndim == 2 else 0
    if P < 1:
        raise MJXInputError("params must hold a batch of policies: log_std of shape (P, act_dim), P >= 1")
    bad = sorted(k for k, v in arrays.items()
                 if v.shape[:1] != (P,) or v.ndim != (3 if k.startswith("w") else 2))
    if bad:
        raise MJXInputError(f"params {', '.join(bad)} are not stacked over P={P} policies "
                            "(vectors (P, n), weight matrices (P, n_in, n_out))")
    last = n_layers(arrays) - 1
    obs_dim, act_dim = task.obs_dim, task.act_dim
    if arrays["obs_mean"].shape[1:] != (obs_dim,) or arrays["w0"].shape[1] != obs_dim:
        raise MJXInputError(f"policies expect observations of size {arrays['w0'].shape[1]}, "
                            f"{task.name} has {obs_dim}")
    if arrays["log_std"].shape[1:] != (act_dim,) or arrays[f"b{last}"].shape[1:] != (act_dim,):
        raise MJXInputError(f"policies output {arrays[f'b{last}'].shape[1:]} actions, "
                            f"{task.name} has {act_dim}")
    return P  # non-finite weights are allowed: like native, they give non-finite returns


def mjx_run_policies(task: Task, params: dict, policy_index, qpos0, qvel0, *,
                     horizon: int = MAX_EPISODE_STEPS, deterministic: bool = True, seed: int = 0) -> Rollout:
    """Env i runs policy ``policy_index[i]`` from (qpos0[i], qvel0[i]) for up to ``horizon`` steps.

    ``params`` holds P policies (leading axis P). Deterministic runs take the mean action; otherwise
    actions are sampled from each policy's Gaussian with a key derived from ``seed``. Returns the
    per-env returns (float64), lengths and termination flags, like the native ``run_policies``.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) \
            or not 1 <= horizon <= MAX_EPISODE_STEPS:
        raise MJXInputError(f"horizon must be an integer in [1, {MAX_EPISODE_STEPS}], got {horizon!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MJXInputError(f"seed must be an integer, got {seed!r}")
    P = _check_params(task, params)
    policy_index = np.asarray(policy_index)
    if policy_index.ndim != 1 or policy_index.size == 0 or not np.issubdtype(policy_index.dtype, np.integer):
        raise MJXInputError("policy_index must be a non-empty 1-D array of integers")
    if policy_index.min() < 0 or policy_index.max() >= P:
        raise MJXInputError(f"policy_index must lie in [0, {P})")
    B = policy_index.size
    enable_persistent_cache()
    m = mjx_model(task)
    dtype = np.dtype(_float_dtype())
    qpos0 = np.asarray(qpos0, dtype)
    qvel0 = np.asarray(qvel0, dtype)
    if qpos0.shape != (B, m.nq) or qvel0.shape != (B, m.nv):
        raise MJXInputError(f"start states must have shapes ({B}, {m.nq}) and ({B}, {m.nv}), "
                            f"got {qpos0.shape} and {qvel0.shape}")
    if not (np.all(np.isfinite(qpos0)) and np.all(np.isfinite(qvel0))):
        raise MJXInputError("start states hold non-finite values")
    args = ({k: np.asarray(v, dtype) for k, v in params.items()}, policy_index.astype(np.int32),
            qpos0, qvel0, jax.random.PRNGKey(seed))
    run = _compiled_rollout(task, m, args, int(horizon), bool(deterministic))
    returns, lengths, terminated = run(m, *args)
    return Rollout(np.asarray(returns, np.float64), np.asarray(lengths), np.asarray(terminated))


def mjx_episode_returns(task: Task, params: dict, policy_index, qpos0, qvel0, *,
                        horizon: int = MAX_EPISODE_STEPS, deterministic: bool = True,
                        seed: int = 0) -> np.ndarray:
    """Undiscounted returns (B,), float64, of ``mjx_run_policies``."""
    return mjx_run_policies(task, params, policy_index, qpos0, qvel0, horizon=horizon,
                            deterministic=deterministic, seed=seed).returns
