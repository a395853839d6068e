"""PyTorch implementations of the protected functions (the torch export copies them verbatim).

Each function is named after its `grammar.language` class and computes that class's `definition`.  They
may only use `torch` and the guard constants.  Operands that can be plain Python numbers in exported code
(the exponent of safe_pow, literal arguments of minimum/maximum/safe_div) are accepted as such.
"""
import torch

from grammar.language import EXP_CLIP, POW_LIMIT, SAFE_EPS

LN2 = 0.6931471805599453


def safe_exp(x):
    return torch.exp(torch.clamp(x, -EXP_CLIP, EXP_CLIP))


def safe_log(x):
    return torch.log(torch.clamp(torch.abs(x), min=SAFE_EPS))


def safe_log1p(x):
    return torch.log1p(torch.clamp(x, min=-1.0 + SAFE_EPS))


def log1mexp(x):
    x = torch.clamp(x, max=-SAFE_EPS)  # both branches below are finite for x <= -SAFE_EPS
    return torch.where(x > -LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def logsigmoid(x):
    return torch.nn.functional.logsigmoid(x)


def softplus(x):
    return torch.logaddexp(x, torch.zeros_like(x))  # F.softplus is linear beyond a threshold


def sigmoid(x):
    return torch.sigmoid(x)


def relu(x):
    return torch.relu(x)


def safe_div(a, b):
    if not torch.is_tensor(a) and not torch.is_tensor(b):  # a constant part of the loss
        return a / (b if abs(b) > SAFE_EPS else (SAFE_EPS if b >= 0 else -SAFE_EPS))
    if not torch.is_tensor(b):
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    guard = torch.where(b >= 0, torch.full_like(b, SAFE_EPS), torch.full_like(b, -SAFE_EPS))
    return a / torch.where(torch.abs(b) > SAFE_EPS, b, guard)


def safe_pow(x, k):
    k = torch.clamp(k, -POW_LIMIT, POW_LIMIT) if torch.is_tensor(k) else min(max(k, -POW_LIMIT), POW_LIMIT)
    return torch.clamp(torch.abs(x), min=SAFE_EPS) ** k


def minimum(a, b):
    if not torch.is_tensor(a):
        a, b = b, a
    return torch.minimum(a, b) if torch.is_tensor(b) else torch.clamp(a, max=b)


def maximum(a, b):
    if not torch.is_tensor(a):
        a, b = b, a
    return torch.maximum(a, b) if torch.is_tensor(b) else torch.clamp(a, min=b)
