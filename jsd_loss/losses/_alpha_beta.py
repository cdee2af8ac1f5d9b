"""The alpha-beta divergence of Cichocki, Cruces and Amari (2011), evaluated stably.

For distributions ``p`` (teacher) and ``q`` (student) over the last dim::

    D_AB(p || q) = -1/(alpha beta) sum_v (p^alpha q^beta - alpha/(alpha+beta) p^(alpha+beta)
                                          - beta/(alpha+beta) q^(alpha+beta))

and, in closed form on the lines where that formula is 0/0 (the limits of it):

* ``beta = 0``:  ``1/alpha^2 sum (p^alpha log(p^alpha / q^alpha) - p^alpha + q^alpha)``;
  ``(1, 0)`` is ``sum p log(p/q) - p + q = KL(p || q)``, the forward KL;
* ``alpha = 0``: ``1/beta^2 sum (q^beta log(q^beta / p^beta) - q^beta + p^beta)``;
  ``(0, 1)`` is ``KL(q || p)``, the reverse KL;
* ``alpha = -beta``: ``1/alpha^2 sum (log(q^alpha / p^alpha) + (q^alpha / p^alpha)^-1 - 1)``;
* ``alpha = beta = 0``: ``1/2 sum (log p - log q)^2``.

One expression covers all of them. With ``a = log p``, ``b = log q``, ``d = b - a``, each
term is ``d^2 * e[(alpha+beta) a, (alpha+beta) b, alpha a + beta b]``, the second divided
difference of ``exp`` at those three exponents (the general formula is its explicit
expansion; on the singular lines two or three of the points coincide and the divided
difference becomes a derivative). It is evaluated from the largest exponent downwards with
``expm1``, and by its Taylor series when the three points lie within ``_TAYLOR_WIDTH``, so the
value is accurate (and positive) in float32 on and near every line: the value at
``beta = 1e-7`` is the ``beta = 0`` value, not a cancellation. Gradient w.r.t. ``log q``:
``(q^(alpha+beta) - p^alpha q^beta) / alpha``, i.e. ``exp(max(...)) * d * psi(|alpha d|)``
with ``psi(x) = (1 - exp(-x)) / x``.

Zero probabilities: log-probabilities are floored at ``_LOG_FLOOR`` (probability
``exp(-1e4)``, zero in every float format), and the largest exponent is capped at
``_EXP_MAX``. Where the divergence is infinite (a zero probability under a log, on the
``alpha = 0`` / ``beta = 0`` lines, or under a negative power) it comes out large but finite,
like the KL whose support is violated. With ``alpha, beta > 0`` nothing is capped, and a
banned token adds what the formula with ``0^s = 0`` gives, up to ``exp(-1e4 s)`` for the
smallest exponent ``s`` (nothing, in float32, for ``s >= 0.01``).
"""

from typing import Tuple

import torch

_LOG_FLOOR = -1e4
_EXP_MAX = 50.0
_TAYLOR_WIDTH = 0.5


def _psi(x: torch.Tensor) -> torch.Tensor:
    """``(1 - exp(-x)) / x`` for ``x >= 0`` (1 at 0), without cancellation."""
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, -torch.expm1(-safe) / safe, torch.ones_like(x))


def _exp_divided_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e[x, y, 0]``, the second divided difference of ``exp`` at ``x <= y <= 0`` and 0."""
    near = x > -_TAYLOR_WIDTH
    # explicit: (e[y, 0] - e[x, y]) / (0 - x), each first difference by expm1
    width = torch.where(near, torch.ones_like(x), -x)
    explicit = (_psi(-y) - torch.exp(y) * _psi(y - x)) / width
    # Taylor: sum_k h_k(x, y) / (k + 2)!, h_k the complete homogeneous polynomial
    xs, ys = torch.where(near, x, 0.0), torch.where(near, y, 0.0)
    terms = 14 if x.dtype == torch.float64 else 7  # truncation below the dtype's rounding
    h, x_pow, factorial = torch.ones_like(x), torch.ones_like(x), 2.0
    series = torch.full_like(x, 0.5)
    for k in range(1, terms + 1):
        x_pow = x_pow * xs
        h = x_pow + ys * h
        factorial *= k + 2
        series = series + h / factorial
    return torch.where(near, series, explicit)


def alpha_beta_divergence(
    log_q: torch.Tensor, log_p: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """Per-token ``D_AB(p || q)`` (module docstring) of log-probabilities over the last dim.

    Args:
        log_q (torch.Tensor): student log-probabilities, shape (..., K).
        log_p (torch.Tensor): teacher log-probabilities, shape (..., K).
        alpha (float): exponent of the teacher.
        beta (float): exponent of the student.

    Returns:
        torch.Tensor: the divergence, shape (...,), non-negative up to rounding.
    """
    a, b = log_p.clamp(min=_LOG_FLOOR), log_q.clamp(min=_LOG_FLOOR)
    d = b - a
    # the exponents (alpha+beta) a, alpha a + beta b, (alpha+beta) b are (alpha+beta) a plus
    # 0, beta d, (alpha+beta) d: sort those three offsets
    u, v = beta * d, (alpha + beta) * d
    lo = torch.minimum(u, v).clamp(max=0.0)
    hi = torch.maximum(u, v).clamp(min=0.0)
    mid = torch.maximum(torch.minimum(u, v), torch.minimum(torch.maximum(u, v), torch.zeros_like(u)))
    top = ((alpha + beta) * a + hi).clamp(max=_EXP_MAX)
    terms = d * d * torch.exp(top) * _exp_divided_difference(lo - hi, mid - hi)
    return terms.sum(dim=-1)


def alpha_beta_divergence_and_grad(
    log_q: torch.Tensor, log_p: torch.Tensor, alpha: float, beta: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`alpha_beta_divergence` and its gradient w.r.t. ``log_q``, shape (..., K)."""
    a, b = log_p.clamp(min=_LOG_FLOOR), log_q.clamp(min=_LOG_FLOOR)
    d = b - a
    # (q^(alpha+beta) - p^alpha q^beta) / alpha = exp(larger exponent) * d * psi(|alpha d|)
    top = (alpha * a + beta * b + (alpha * d).clamp(min=0.0)).clamp(max=_EXP_MAX)
    grad = torch.exp(top) * d * _psi((alpha * d).abs())
    grad = torch.where(log_q > _LOG_FLOOR, grad, torch.zeros_like(grad))
    return alpha_beta_divergence(log_q, log_p, alpha, beta), grad
