"""Divergences between a student's logits and a top-k + tail teacher (per token).

Both sides become distributions over ``k + 1`` buckets (see :mod:`jsd_loss.losses._topk`):

* teacher: ``P_j = exp(log_probs_j)`` for the k cached tokens, ``P_tail = exp(tail_log_mass)``,
  used as given (not renormalised);
* student, with ``q = softmax(student_logits / T)``: ``Q_j = q[ids_j]`` and
  ``log Q_tail = logsumexp_{v not in ids} log q_v``, i.e. the ``logsumexp`` of the tempered
  logits over the complement of the ids minus their ``logsumexp`` over all tokens.

The divergence is then exactly that of :func:`~jsd_loss.losses.generalized_jsd` on the
buckets (``beta = 0`` forward KL ``KL(P_t || P_s)``, ``beta = 1`` reverse KL
``KL(P_s || P_t)``, ``_LOG_ZERO`` flooring of zero-mass buckets, ``clamp(min=0)``, scaled by
``temperature ** 2``). Only the student is tempered: the teacher is already at the
temperature ``T`` of the loss. With ``k == V`` the tails are empty and the value equals
the dense :func:`~jsd_loss.losses.generalized_jsd` of the full teacher logits.

Gradient (closed form): with ``g_b = dL/dQ_b`` and ``b(v)`` the bucket of token ``v``,
``dL/dz_v = q_v * (g_{b(v)} - sum_b Q_b g_b)`` for ``z = logits / T``. For ``beta > 0``,
``g_b = (1 - beta) * (log Q_b - log M_b)`` (``log Q_b - log P_b`` at ``beta = 1``; the
constants that ``sum_b Q_b = 1`` cancels are dropped); for ``beta = 0``, ``g_b = -P_b / Q_b``,
evaluated as ``q_v * P_b / Q_b = exp(log q_v - log Q_b + log P_b) <= P_b`` so that a
vanishing student tail cannot overflow.
"""

import functools
from typing import Tuple

import torch

from jsd_loss.losses._autocast import _autocast_off
from jsd_loss.losses._closed_form import _ClosedFormDivergence
from jsd_loss.losses._functional import (
    _LOG_ZERO,
    _check_args,
    _divergence_of_log_probs,
    _log_probs,
    _mixture_log_probs,
)
from jsd_loss.losses._topk import TopKDistribution, _check_topk


def _teacher_buckets(teacher: TopKDistribution, dtype: torch.dtype) -> torch.Tensor:
    """Teacher bucket log-masses ``(..., k + 1)``, the tail last, floored at ``_LOG_ZERO``."""
    log_p = torch.cat([teacher.log_probs.to(dtype), teacher.tail_log_mass.to(dtype).unsqueeze(-1)], -1)
    return log_p.clamp(min=_LOG_ZERO)


def _prepare(student_logits, teacher, beta, temperature) -> TopKDistribution:
    _check_args(beta, temperature)
    teacher = teacher.to(student_logits.device)
    _check_topk(student_logits, teacher)
    return teacher


@_autocast_off
def topk_generalized_jsd(
    student_logits: torch.Tensor,
    teacher: TopKDistribution,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token generalized JSD between the student and a top-k + tail teacher.

    Args:
        student_logits (torch.Tensor): student logits of shape (N, V) (any leading
            shape works if the teacher's matches).
        teacher (TopKDistribution): the teacher, already at ``temperature``: ids and
            log_probs (N, k), tail_log_mass (N,); ``k <= V``, ids distinct in ``[0, V)``.
        beta (float): see :func:`~jsd_loss.losses.generalized_jsd`. Default: 0.5.
        temperature (float): applied to the student logits only; the result is scaled
            by ``temperature ** 2``. Default: 1.0.

    Returns:
        torch.Tensor: non-negative per-token divergence of the (k+1)-bucket
        distributions, shape (N,), float32 (float64 for float64 logits). Differentiable
        w.r.t. ``student_logits`` (and the teacher's log-masses).
    """
    teacher = _prepare(student_logits, teacher, beta, temperature)
    div = _divergence_of_log_probs(*_bucket_log_probs(student_logits, teacher, temperature), beta)
    return div.clamp(min=0.0) * temperature**2


def _bucket_log_probs(
    student_logits: torch.Tensor, teacher: TopKDistribution, temperature: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher bucket log-masses, each ``(..., k + 1)`` with the tail last
    (differentiable; no argument checks)."""
    log_q = _log_probs(student_logits, temperature)
    ids = teacher.ids.long()
    log_q_tail = torch.logsumexp(log_q.scatter(-1, ids, _LOG_ZERO), dim=-1, keepdim=True)
    log_q_buckets = torch.cat([log_q.gather(-1, ids), log_q_tail], -1)
    return log_q_buckets, _teacher_buckets(teacher, log_q.dtype)


@torch.no_grad()
@_autocast_off
def _topk_jsd_and_grad(
    student_logits: torch.Tensor,
    teacher: TopKDistribution,
    beta: float,
    temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_generalized_jsd_and_grad` without the argument checks."""
    ids = teacher.ids.long()
    # the one (N, V) buffer: log q, then log q over the tail tokens, then the gradient
    buf = _log_probs(student_logits, temperature, inplace=True)
    log_q_top = buf.gather(-1, ids)
    buf.scatter_(-1, ids, _LOG_ZERO)
    log_q = torch.cat([log_q_top, torch.logsumexp(buf, dim=-1, keepdim=True)], -1)
    log_p = _teacher_buckets(teacher, buf.dtype)
    div = _divergence_of_log_probs(log_q, log_p, beta)
    q_buckets = log_q.exp()
    if beta == 0.0:
        p = log_p.exp()
        mass = p.sum(-1, keepdim=True)
        # q_v * P_tail / Q_tail for the tail tokens (the id entries are overwritten below);
        # the cap keeps a banned token of a floored tail at exp(_LOG_ZERO / 2) = 0, not 0/0
        shift = (log_p[..., -1:] - log_q[..., -1:]).clamp_(max=-0.5 * _LOG_ZERO)
        tail_term = torch.add(buf, shift).exp_()
        grad = buf.exp_().mul_(mass).sub_(tail_term)
        top_grad = q_buckets[..., :-1] * mass - p[..., :-1]
    else:
        if beta == 1.0:
            g = log_q - log_p
        else:
            g = (1.0 - beta) * (log_q - _mixture_log_probs(log_p, log_q, beta))
        mean_g = (q_buckets * g).sum(-1, keepdim=True)
        grad = buf.exp_().mul_(g[..., -1:] - mean_g)
        top_grad = q_buckets[..., :-1] * (g[..., :-1] - mean_g)
    grad.scatter_(-1, ids, top_grad)
    return div.clamp_(min=0.0).mul_(temperature**2), grad.mul_(temperature)


def topk_generalized_jsd_and_grad(
    student_logits: torch.Tensor,
    teacher: TopKDistribution,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token top-k divergence and its closed-form gradient w.r.t. the student logits.

    No autograd graph over ``(N, V)`` is built; used by the fused-linear losses. The
    gradient is the one in the module docstring, times ``T`` from the chain rule through
    ``logits / T`` and the ``T ** 2`` scale.

    Args:
        student_logits (torch.Tensor): student logits of shape (N, V).
        teacher (TopKDistribution): see :func:`topk_generalized_jsd`.
        beta (float): see :func:`topk_generalized_jsd`.
        temperature (float): see :func:`topk_generalized_jsd`.

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: the per-token divergence (N,) and the gradient
        of each token's divergence w.r.t. its student logits (N, V), in the math dtype.
    """
    teacher = _prepare(student_logits, teacher, beta, temperature)
    return _topk_jsd_and_grad(student_logits, teacher, beta, temperature)


def topk_student_divergence(
    student_logits: torch.Tensor,
    teacher: TopKDistribution,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """:func:`topk_generalized_jsd` with the memory-lean closed-form backward.

    Same value; gradients flow to ``student_logits`` only. Falls back to
    :func:`topk_generalized_jsd` when the teacher's log-masses require grad or the
    student logits do not.
    """
    if (
        teacher.log_probs.requires_grad
        or teacher.tail_log_mass.requires_grad
        or not student_logits.requires_grad
    ):
        return topk_generalized_jsd(student_logits, teacher, beta, temperature)
    teacher = _prepare(student_logits, teacher, beta, temperature)
    value_and_grad = functools.partial(_topk_jsd_and_grad, beta=beta, temperature=temperature)
    return _ClosedFormDivergence.apply(student_logits, teacher, value_and_grad)
