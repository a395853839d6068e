"""JAX implementations of the protected functions (kernel, `compile_jax`, JAX export).

Each function is named after its `grammar.language` class and computes that class's `definition`; each is
finite with a finite gradient on every finite input.  The export copies these functions verbatim, so they
may only use `jax`, `jnp` and the guard constants.
"""
import jax
import jax.numpy as jnp

from grammar.language import EXP_CLIP, POW_LIMIT, SAFE_EPS

LN2 = 0.6931471805599453


def safe_exp(x):
    return jnp.exp(jnp.clip(x, -EXP_CLIP, EXP_CLIP))


def safe_log(x):
    return jnp.log(jnp.maximum(jnp.abs(x), SAFE_EPS))


def safe_log1p(x):
    return jnp.log1p(jnp.maximum(x, -1.0 + SAFE_EPS))


def log1mexp(x):
    x = jnp.minimum(x, -SAFE_EPS)  # both branches below are finite for x <= -SAFE_EPS
    return jnp.where(x > -LN2, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def logsigmoid(x):
    return jax.nn.log_sigmoid(x + 0.0)  # + 0.0: literal integer arguments


def softplus(x):
    return jax.nn.softplus(x + 0.0)


def sigmoid(x):
    return jax.nn.sigmoid(x + 0.0)


def relu(x):
    return jnp.maximum(x, 0.0)


def safe_div(a, b):
    return a / jnp.where(jnp.abs(b) > SAFE_EPS, b, jnp.where(b >= 0, SAFE_EPS, -SAFE_EPS))


def safe_pow(x, k):
    return jnp.maximum(jnp.abs(x), SAFE_EPS) ** jnp.clip(k, -POW_LIMIT, POW_LIMIT)
