"""Functional core of the total variation, adaptive KL and skew KL divergences.

Each function takes per-token log-probabilities of the student (``log_q``) and the teacher
(``log_p``) over the last dim, shape (..., K), with K the vocabulary or the k + 1 buckets of
a top-k teacher, and returns the per-token value (...,) unscaled; each ``*_and_grad`` also
returns the gradient of that value w.r.t. ``log_q`` (..., K), ``log_q`` taken as free
coordinates (the forms project it onto the simplex). Zero probabilities come as log-probabilities
floored at a large negative finite value (see :mod:`jsd_loss.losses._functional`).
"""

from typing import Tuple

import torch

from jsd_loss.losses._functional import _kl_from_log_probs, _mixture_log_probs


def total_variation(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_v |p_v - q_v|``."""
    return 0.5 * (log_q.exp() - log_p.exp()).abs().sum(dim=-1)


def total_variation_and_grad(
    log_q: torch.Tensor, log_p: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`total_variation` and ``1/2 sign(q - p) q`` (0 where ``q == p``)."""
    q = log_q.exp()
    diff = q - log_p.exp()
    return 0.5 * diff.abs().sum(dim=-1), 0.5 * torch.sign(diff) * q


def _skew_mixture(log_q, log_p, alpha, direction):
    """``log m``: ``alpha p + (1 - alpha) q`` (forward) or ``(1 - alpha) p + alpha q`` (reverse)."""
    if alpha == 0.0:
        return log_q if direction == "forward" else log_p
    return _mixture_log_probs(log_p, log_q, alpha if direction == "forward" else 1.0 - alpha)


def skew_kl(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float, direction: str) -> torch.Tensor:
    """DistiLLM's skew KL: ``KL(p || alpha p + (1 - alpha) q)`` (forward) or
    ``KL(q || (1 - alpha) p + alpha q)`` (reverse); ``alpha = 0`` is the plain KL."""
    log_m = _skew_mixture(log_q, log_p, alpha, direction)
    if direction == "forward":
        return _kl_from_log_probs(log_p, log_m)
    return _kl_from_log_probs(log_q, log_m)


def skew_kl_and_grad(
    log_q: torch.Tensor, log_p: torch.Tensor, alpha: float, direction: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`skew_kl` and its gradient.

    Forward: ``-(1 - alpha) p q / m``. Reverse: ``q (log q - log m + 1 - alpha q / m)``. The
    ratios ``q / m`` are formed in log space: both are at most ``1 / (1 - alpha)`` and ``1 / alpha``.
    """
    log_m = _skew_mixture(log_q, log_p, alpha, direction)
    if direction == "forward":
        value = _kl_from_log_probs(log_p, log_m)
        grad = (log_p + log_q - log_m).exp().mul_(-(1.0 - alpha))
    else:
        q = log_q.exp()
        value = _kl_from_log_probs(log_q, log_m)
        ratio = (log_q - log_m).exp().mul_(alpha)
        grad = q * (log_q - log_m + 1.0 - ratio)
    return value, grad


@torch.no_grad()
def adaptive_kl_head_weight(log_q: torch.Tensor, log_p: torch.Tensor, mu: float) -> torch.Tensor:
    """AKL's weight of the forward KL, (...,), without gradient.

    The head is the teacher's most probable tokens, in order, while their cumulative
    probability is at most ``mu`` (always at least the top one); the weight is the head's
    share of ``sum |p - q|``, and 1/2 where ``p == q`` (both KLs are 0 there).
    """
    p_sorted, order = log_p.exp().sort(dim=-1, descending=True)
    gap = (p_sorted - log_q.exp().gather(-1, order)).abs()
    head = p_sorted.cumsum(dim=-1) <= mu
    head[..., 0] = True
    head_gap, total_gap = (gap * head).sum(dim=-1), gap.sum(dim=-1)
    return torch.where(total_gap > 0, head_gap / total_gap, 0.5)


def adaptive_kl(log_q: torch.Tensor, log_p: torch.Tensor, mu: float) -> torch.Tensor:
    """Adaptive KL (Wu et al., 2024): ``w KL(p || q) + (1 - w) KL(q || p)`` with ``w`` from
    :func:`adaptive_kl_head_weight`."""
    w = adaptive_kl_head_weight(log_q, log_p, mu)
    return w * _kl_from_log_probs(log_p, log_q) + (1.0 - w) * _kl_from_log_probs(log_q, log_p)


def adaptive_kl_and_grad(
    log_q: torch.Tensor, log_p: torch.Tensor, mu: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`adaptive_kl` and ``-w p + (1 - w) q (log q - log p + 1)`` (``w`` held fixed)."""
    w = adaptive_kl_head_weight(log_q, log_p, mu)
    q, p = log_q.exp(), log_p.exp()
    forward, reverse = _kl_from_log_probs(log_p, log_q), _kl_from_log_probs(log_q, log_p)
    w_ = w.unsqueeze(-1)
    grad = (1.0 - w_) * q * (log_q - log_p + 1.0) - w_ * p
    return w * forward + (1.0 - w) * reverse, grad
