"""The divergence interface, and how the loss forms apply a divergence to logits.

A :class:`Divergence` compares two distributions given as per-token log-probabilities over
the last dim, shape (..., K): K is the vocabulary for a dense teacher, or the ``k + 1``
buckets of a top-k + tail teacher (:mod:`jsd_loss.losses._topk`), so one divergence serves
both. It returns per-token values (...,), unscaled. The loss forms (per-token, chunked,
fused-linear) take any divergence as a component and add what is common to all: the
temperature (``softmax(logits / T)``, result times ``T ** 2``), float32 math whatever the
logits' dtype (float64 for float64 logits), autocast off, ``clamp(min=0)`` against rounding,
masking.

The chunked and fused-linear forms need each token's gradient w.r.t. the student logits
without an autograd graph over ``(tokens, vocab)``. A divergence gives the gradient of its
value w.r.t. ``log_q`` taken as free coordinates (:meth:`Divergence.value_and_grad`; closed
form where it overrides it, autograd inside the chunk otherwise), and
:func:`_logits_value_and_grad` projects it onto the logits: with ``G = dD / d log q`` and
``z = logits / T``,

* dense: ``dD / dz_v = G_v - q_v sum_u G_u``;
* top-k: ``dD / dz_v = G_b(v) q_v / Q_b(v) - q_v sum_b G_b`` with ``b(v)`` the bucket of
  token ``v`` (``q_v / Q_b = 1`` for a cached token), ``q_v / Q_tail`` formed in log space.
"""

import abc
import functools
from typing import Any, Mapping, Tuple, Union

import torch
from torch import nn

from jsd_loss.losses._autocast import _autocast_off
from jsd_loss.losses._closed_form import _ClosedFormDivergence
from jsd_loss.losses._functional import _LOG_ZERO, _check_logits, _log_probs
from jsd_loss.losses._topk import TopKDistribution, _check_topk
from jsd_loss.losses._topk_divergence import _bucket_log_probs, _teacher_buckets

Teacher = Union[torch.Tensor, TopKDistribution]


class Divergence(nn.Module, metaclass=abc.ABCMeta):
    """A divergence ``D(P_t || P_s)`` between teacher and student, per token.

    Subclasses implement :meth:`forward` and, for a closed-form backward in the chunked and
    fused-linear forms, :meth:`value_and_grad`. Both see log-probabilities already tempered,
    in the math dtype, with zero probabilities floored at a large negative finite value.
    """

    @abc.abstractmethod
    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """
        Args:
            log_q (torch.Tensor): student log-probabilities, shape (..., K).
            log_p (torch.Tensor): teacher log-probabilities, shape (..., K).

        Returns:
            torch.Tensor: the divergence per token, shape (...,), unscaled.
        """

    def value_and_grad(
        self, log_q: torch.Tensor, log_p: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The value of :meth:`forward` (...,) and its gradient w.r.t. ``log_q`` (..., K).

        This default differentiates :meth:`forward` with autograd (inside one chunk);
        subclasses override it with a closed form.
        """
        with torch.enable_grad():
            x = log_q.detach().requires_grad_(True)
            value = self(x, log_p.detach())
            (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad

    def logits_value_and_grad(
        self, student_logits: torch.Tensor, teacher: Teacher, temperature: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss ``T ** 2 * D`` (N,) and its gradient w.r.t. the student logits
        (N, V), from dense teacher logits (N, V) or a top-k teacher (N, k) whose ids are
        already checked. Subclasses may override it with a faster fused form."""
        return _logits_value_and_grad(self, student_logits, teacher, temperature)


def as_divergence(divergence: Any) -> Divergence:
    """``divergence`` itself, or the divergence a config node ``{_component_: ..., ...}``
    describes: torchtune's ``config.instantiate`` does not build nested components, so a
    loss built from YAML receives its ``divergence`` as a plain mapping and builds it here."""
    if isinstance(divergence, Mapping) and "_component_" in divergence:
        from omegaconf import OmegaConf
        from torchtune import config

        divergence = config.instantiate(OmegaConf.create(dict(divergence)))
    if not isinstance(divergence, Divergence):
        raise TypeError(
            f"divergence must be a jsd_loss.Divergence or a config node with a _component_ "
            f"that builds one, got {type(divergence).__name__}"
        )
    return divergence


@_autocast_off
def divergence_of_logits(
    divergence: Divergence, student_logits: torch.Tensor, teacher: Teacher, temperature: float
) -> torch.Tensor:
    """Per-token ``T ** 2 * D`` (N,) by autograd: differentiable w.r.t. both inputs.

    Args:
        divergence (Divergence): the divergence.
        student_logits (torch.Tensor): student logits of shape (N, V).
        teacher (Union[torch.Tensor, TopKDistribution]): teacher logits (N, V), or a top-k
            teacher (N, k) already at ``temperature``.
        temperature (float): softmax temperature (of the student only for a top-k teacher).

    Returns:
        torch.Tensor: non-negative per-token loss (N,), float32 (float64 for float64 logits).
    """
    if isinstance(teacher, TopKDistribution):
        _check_topk(student_logits, teacher)
        log_q, log_p = _bucket_log_probs(student_logits, teacher, temperature)
    else:
        _check_logits(student_logits, teacher)
        log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher, temperature)
    return divergence(log_q, log_p).clamp(min=0.0) * temperature**2


def student_divergence_of_logits(
    divergence: Divergence, student_logits: torch.Tensor, teacher: Teacher, temperature: float
) -> torch.Tensor:
    """:func:`divergence_of_logits` for a frozen teacher, with a memory-lean backward.

    Same value; gradients flow to ``student_logits`` only, from
    :meth:`Divergence.logits_value_and_grad`. Falls back to :func:`divergence_of_logits`
    when the teacher requires grad or the student logits do not.
    """
    if isinstance(teacher, TopKDistribution):
        teacher_grad = teacher.log_probs.requires_grad or teacher.tail_log_mass.requires_grad
    else:
        teacher_grad = teacher.requires_grad
    if teacher_grad or not student_logits.requires_grad:
        return divergence_of_logits(divergence, student_logits, teacher, temperature)
    if isinstance(teacher, TopKDistribution):
        _check_topk(student_logits, teacher)
    value_and_grad = functools.partial(divergence.logits_value_and_grad, temperature=temperature)
    return _ClosedFormDivergence.apply(student_logits, teacher, value_and_grad)


@torch.no_grad()
@_autocast_off
def _logits_value_and_grad(
    divergence: Divergence, student_logits: torch.Tensor, teacher: Teacher, temperature: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Divergence.logits_value_and_grad` from :meth:`Divergence.value_and_grad`
    (the projections in the module docstring), times ``T`` for the chain rule through
    ``logits / T`` and the ``T ** 2`` scale."""
    if isinstance(teacher, TopKDistribution):
        ids = teacher.ids.long()
        buf = _log_probs(student_logits, temperature, inplace=True)  # log q, then over the tail
        log_q_top = buf.gather(-1, ids)
        buf.scatter_(-1, ids, _LOG_ZERO)
        log_q_tail = torch.logsumexp(buf, dim=-1, keepdim=True)
        log_q = torch.cat([log_q_top, log_q_tail], -1)
        value, g = divergence.value_and_grad(log_q, _teacher_buckets(teacher, buf.dtype))
        g_sum = g.sum(-1, keepdim=True)
        tail_share = torch.sub(buf, log_q_tail).exp_()  # q_v / Q_tail (<= 1; ids overwritten)
        grad = tail_share.mul_(g[..., -1:]).sub_(buf.exp_().mul_(g_sum))
        grad.scatter_(-1, ids, g[..., :-1] - log_q_top.exp() * g_sum)
    else:
        _check_logits(student_logits, teacher)
        log_q = _log_probs(student_logits, temperature, inplace=True)
        value, g = divergence.value_and_grad(log_q, _log_probs(teacher, temperature, inplace=True))
        grad = torch.sub(g, log_q.exp().mul_(g.sum(-1, keepdim=True)))
    return value.clamp(min=0.0).mul_(temperature**2), grad.mul_(temperature)
