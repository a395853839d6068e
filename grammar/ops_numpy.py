"""NumPy implementations of the protected functions (float64 reference path: fingerprints, plots).

Each function is named after its `grammar.language` class and computes that class's `definition`.
"""
import numpy as np

from grammar.language import EXP_CLIP, POW_LIMIT, SAFE_EPS

LN2 = 0.6931471805599453


def safe_exp(x):
    return np.exp(np.clip(x, -EXP_CLIP, EXP_CLIP))


def safe_log(x):
    return np.log(np.maximum(np.abs(x), SAFE_EPS))


def safe_log1p(x):
    return np.log1p(np.maximum(x, -1.0 + SAFE_EPS))


def log1mexp(x):
    x = np.minimum(x, -SAFE_EPS)
    return np.where(x > -LN2, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def relu(x):
    return np.maximum(x, 0.0)


def safe_div(a, b):
    return a / np.where(np.abs(b) > SAFE_EPS, b, np.where(b >= 0, SAFE_EPS, -SAFE_EPS))


def safe_pow(x, k):
    return np.maximum(np.abs(x), SAFE_EPS) ** np.clip(k, -POW_LIMIT, POW_LIMIT)
