"""Functional core of the distillation divergences.

Every function here works per token on 2-D logits ``(N, V)`` and returns a per-token
loss of shape ``(N,)``. The math runs in float32, or float64 when the logits are
float64, whatever the input dtype (bf16 logits are upcast before the softmax).

Conventions used throughout the package:

* ``P_t`` is the teacher distribution, ``P_s`` the student distribution, both
  ``softmax(logits / temperature)``.
* The generalized Jensen-Shannon divergence with mixture weight ``beta`` is::

      M       = beta * P_t + (1 - beta) * P_s
      JSD_beta = beta * KL(P_t || M) + (1 - beta) * KL(P_s || M)

  ``log M`` is formed with ``logaddexp`` in log space from the two log-probabilities
  (the mixture itself is a mixture of *probabilities*; only its logarithm is taken
  stably). ``JSD_beta`` tends to zero at both ends of ``[0, 1]``; its normalised forms
  do not: ``JSD_beta / beta -> KL(P_t || P_s)`` as ``beta -> 0`` and
  ``JSD_beta / (1 - beta) -> KL(P_s || P_t)`` as ``beta -> 1``. Following TRL and
  Liger-Kernel, ``beta = 0`` therefore returns the forward KL ``KL(P_t || P_s)`` and
  ``beta = 1`` the reverse KL ``KL(P_s || P_t)``.
* Results are multiplied by ``temperature ** 2`` so that gradient magnitudes stay
  comparable across temperatures (Hinton et al., 2015).
* The math ignores ``torch.autocast`` (switched off in each function: autocast would run
  the row dot products, matmuls, in bf16); only the fused losses' big matmuls follow it.
* Vocabulary entries with ``-inf`` logits (banned tokens) have probability exactly 0.
  Their log-probability is floored at a large finite negative value, so ``0 * log 0``
  terms are 0 in value and in gradient instead of NaN. A KL whose support is violated
  (the teacher puts mass on a token the student bans) is mathematically infinite and
  comes out as a huge finite number.
"""

import functools
import math
from typing import Tuple

import torch
import torch.nn.functional as F

from jsd_loss.losses._autocast import _autocast_off
from jsd_loss.losses._closed_form import _ClosedFormDivergence

# log-probability used for probability-zero entries: far below any real log-probability
# (float32 underflows exp() near -104) yet finite, so differences and products stay finite.
_LOG_ZERO = -1e30


def _math_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _log_probs(logits: torch.Tensor, temperature: float, inplace: bool = False) -> torch.Tensor:
    logits = logits.to(_math_dtype(logits))
    if temperature != 1.0:
        logits = logits / temperature
    log_p = F.log_softmax(logits, dim=-1)
    # in place only outside autograd: log_softmax's backward needs its output
    return log_p.clamp_(min=_LOG_ZERO) if inplace else log_p.clamp(min=_LOG_ZERO)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` without materialising ``a * b``."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).reshape(a.shape[:-1])


def _check_args(beta: float, temperature: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    _check_temperature(temperature)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
            + (
                " (the teacher and student vocabularies differ)"
                if student_logits.shape[:-1] == teacher_logits.shape[:-1]
                else ""
            )
        )


def _kl_from_log_probs(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(A || B) = sum_v a_v (log a_v - log b_v)`` over the last dim."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _mixture_log_probs(
    log_p_teacher: torch.Tensor, log_p_student: torch.Tensor, beta: float
) -> torch.Tensor:
    """``log(beta * P_t + (1 - beta) * P_s)``, without leaving log space."""
    return torch.logaddexp(
        log_p_teacher + math.log(beta), log_p_student + math.log1p(-beta)
    )


def _divergence_of_log_probs(
    log_p_s: torch.Tensor, log_p_t: torch.Tensor, beta: float
) -> torch.Tensor:
    """``JSD_beta`` (KL at the endpoints) of two distributions given as log-probabilities."""
    if beta == 0.0:
        return _kl_from_log_probs(log_p_t, log_p_s)
    if beta == 1.0:
        return _kl_from_log_probs(log_p_s, log_p_t)
    log_m = _mixture_log_probs(log_p_t, log_p_s, beta)
    return beta * _kl_from_log_probs(log_p_t, log_m) + (1.0 - beta) * (
        _kl_from_log_probs(log_p_s, log_m)
    )


@_autocast_off
def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token generalized Jensen-Shannon divergence (see the module docstring).

    Args:
        student_logits (torch.Tensor): student logits of shape (N, V).
        teacher_logits (torch.Tensor): teacher logits of shape (N, V).
        beta (float): mixture weight of the teacher in ``M``. ``0`` gives the forward
            KL ``KL(P_t || P_s)``, ``1`` the reverse KL ``KL(P_s || P_t)``,
            ``0.5`` the symmetric JSD (bounded by ``ln 2``). Default: 0.5.
        temperature (float): softmax temperature applied to both logits; the result
            is scaled by ``temperature ** 2``. Default: 1.0.

    Returns:
        torch.Tensor: non-negative per-token divergence of shape (N,), float32
        (float64 for float64 inputs). Differentiable with respect to both inputs.
    """
    _check_args(beta, temperature)
    _check_logits(student_logits, teacher_logits)
    div = _divergence_of_log_probs(
        _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature), beta
    )
    # rounding can leave a tiny negative value when P_s == P_t; a divergence is >= 0
    return div.clamp(min=0.0) * temperature**2


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    direction: str = "forward",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token true KL divergence, teacher entropy term included.

    ``direction="forward"`` is ``KL(P_t || P_s)`` (mass-covering, the usual KD loss),
    ``"reverse"`` is ``KL(P_s || P_t)`` (mode-seeking). Unlike torchtune's
    ``ForwardKLLoss``, which returns the cross-entropy ``-sum P_t log P_s``, the values
    are true divergences (0 when the distributions agree), so they can be compared with
    JSD values and their variances.

    Args:
        student_logits (torch.Tensor): student logits of shape (N, V).
        teacher_logits (torch.Tensor): teacher logits of shape (N, V).
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
        temperature (float): softmax temperature; the result is scaled by
            ``temperature ** 2``. Default: 1.0.

    Returns:
        torch.Tensor: per-token divergence of shape (N,).
    """
    return generalized_jsd(
        student_logits, teacher_logits, beta=kl_direction_to_beta(direction),
        temperature=temperature,
    )


def kl_direction_to_beta(direction: str) -> float:
    """Map a KL direction to the ``beta`` endpoint of :func:`generalized_jsd`."""
    if direction == "forward":
        return 0.0
    if direction == "reverse":
        return 1.0
    raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


@torch.no_grad()
@_autocast_off
def generalized_jsd_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token divergence and its closed-form gradient w.r.t. the student logits.

    Used by the fused-linear losses, which must not keep an autograd graph over
    ``(tokens, vocab)`` tensors. With ``q = P_s`` and ``s = student_logits / T``:

    * ``0 < beta < 1``: ``d JSD / d s = (1 - beta) * q * (log q - log M - KL(q || M))``
    * ``beta = 0`` (forward KL): ``d / d s = q - P_t``
    * ``beta = 1`` (reverse KL): ``d / d s = q * (log q - log P_t - KL(q || P_t))``

    and the chain rule through ``s = logits / T`` and the ``T ** 2`` scale gives a
    factor ``T``.

    Args:
        student_logits (torch.Tensor): student logits of shape (N, V).
        teacher_logits (torch.Tensor): teacher logits of shape (N, V).
        beta (float): see :func:`generalized_jsd`.
        temperature (float): see :func:`generalized_jsd`.

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: the per-token divergence of shape (N,) and
        the gradient of each token's divergence w.r.t. its student logits, shape
        (N, V), both in the math dtype (float32 or float64).
    """
    _check_args(beta, temperature)
    _check_logits(student_logits, teacher_logits)
    # every (N, V) buffer below is reused in place: this runs per chunk in the fused loss
    log_q = _log_probs(student_logits, temperature, inplace=True)
    log_p = _log_probs(teacher_logits, temperature, inplace=True)
    q = log_q.exp()
    if beta == 0.0:
        p = log_p.exp()
        div = _rowdot(p, log_p) - _rowdot(p, log_q)
        grad = q.sub_(p)
    else:
        if beta == 1.0:
            log_ref = log_p
        else:
            log_ref = torch.add(log_p, math.log(beta))
            torch.logaddexp(log_ref, log_q + math.log1p(-beta), out=log_ref)
        diff = log_q.sub_(log_ref)  # log q - log ref, in place of log_q
        kl_q_ref = _rowdot(q, diff)
        if beta == 1.0:
            div = kl_q_ref
        else:
            p = log_p.exp()
            kl_p_ref = _rowdot(p, log_p) - _rowdot(p, log_ref)
            div = beta * kl_p_ref + (1.0 - beta) * kl_q_ref
        grad = q.mul_(diff.sub_(kl_q_ref.unsqueeze(-1)))
        if beta != 1.0:
            grad.mul_(1.0 - beta)
    return div.clamp_(min=0.0).mul_(temperature**2), grad.mul_(temperature)


def student_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """:func:`generalized_jsd` for a frozen teacher, with a memory-lean backward.

    Same value as :func:`generalized_jsd`; gradients flow to ``student_logits`` only
    (first order). When ``teacher_logits`` requires grad it falls back to
    :func:`generalized_jsd`, which differentiates both inputs.
    """
    if teacher_logits.requires_grad or not student_logits.requires_grad:
        return generalized_jsd(student_logits, teacher_logits, beta, temperature)
    value_and_grad = functools.partial(generalized_jsd_and_grad, beta=beta, temperature=temperature)
    return _ClosedFormDivergence.apply(student_logits, teacher_logits, value_and_grad)
