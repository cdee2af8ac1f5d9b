"""Token-level distillation losses with torchtune's KD loss interface."""

from typing import Union

import torch
from torch import nn

from jsd_loss.losses._divergence import Divergence, as_divergence, student_divergence_of_logits
from jsd_loss.losses._divergences import (
    AdaptiveKLDivergence,
    AlphaBetaDivergence,
    JSDivergence,
    KLDivergence,
    SkewKLDivergence,
    TotalVariationDivergence,
)
from jsd_loss.losses._functional import _check_temperature
from jsd_loss.losses._topk import TopKDistribution, _check_shapes


class DistillLoss(nn.Module):
    """Distillation loss of any :class:`~jsd_loss.Divergence`: the mean over the tokens whose
    label is not ``ignore_index`` of ``temperature ** 2 * D(P_t || P_s)``, with
    ``P = softmax(logits / temperature)`` computed in float32 (float64 for float64 logits).
    Called as ``loss(student_logits, teacher_logits, labels)``, like torchtune's KD losses.

    Example (a torchtune config)::

        kd_loss:
          _component_: jsd_loss.DistillLoss
          divergence:
            _component_: jsd_loss.AlphaBetaDivergence
            alpha: 0.5
            beta: 0.5
          temperature: 1.0

    Args:
        divergence (Divergence): the divergence, e.g. :class:`~jsd_loss.JSDivergence`, or a
            config node ``{_component_: ..., ...}`` that builds one.
        temperature (float): softmax temperature for both distributions (the student's only
            against a top-k teacher, which comes already tempered). Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(self, divergence: Divergence, temperature: float = 1.0, ignore_index: int = -100):
        super().__init__()
        _check_temperature(temperature)  # fail at construction, not at the first training step
        self.divergence = as_divergence(divergence)
        self.temperature = temperature
        self.ignore_index = ignore_index

    def token_sum(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Union[torch.Tensor, TopKDistribution],
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of the divergence over unmasked tokens; masked rows are never computed.
        The teacher is dense logits of the student's shape or a top-k + tail teacher of the
        same token shape."""
        topk = isinstance(teacher_logits, TopKDistribution)
        if topk:
            _check_shapes(student_logits, teacher_logits)  # before flattening; ids on kept rows
            teacher_logits = teacher_logits.to(student_logits.device).flatten()
        else:
            teacher_logits = teacher_logits.reshape(-1, teacher_logits.size(-1))
        student_logits = student_logits.reshape(-1, student_logits.size(-1))
        labels = labels.reshape(-1)
        if labels.numel() != student_logits.size(0):
            raise ValueError(
                f"labels hold {labels.numel()} tokens but the logits hold "
                f"{student_logits.size(0)}"
            )
        keep = labels != self.ignore_index
        if not bool(keep.all()):  # skip masked rows; the copy is paid only when some are
            student_logits = student_logits[keep]
            teacher_logits = teacher_logits.select(keep) if topk else teacher_logits[keep]
        return student_divergence_of_logits(
            self.divergence, student_logits, teacher_logits, self.temperature
        ).sum()

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Union[torch.Tensor, TopKDistribution],
        labels: torch.Tensor,
        normalize: bool = True,
    ) -> torch.Tensor:
        """
        Args:
            student_logits (torch.Tensor): student logits of shape (N, V) (or (B, T, V)).
            teacher_logits (Union[torch.Tensor, TopKDistribution]): teacher logits of the
                same shape, or a top-k + tail teacher whose token dims are those of the
                student logits ((N, k) or (B, T, k)), already at ``temperature`` (see
                :func:`~jsd_loss.losses.topk_generalized_jsd`).
            labels (torch.Tensor): labels of shape (N,) (or (B, T)); tokens equal to
                ``ignore_index`` do not contribute.
            normalize (bool): divide by the number of unmasked tokens. Default: True.

        Returns:
            torch.Tensor: scalar loss (float32, float64 for float64 logits); 0 when every
            token is masked.
        """
        total = self.token_sum(student_logits, teacher_logits, labels)
        if not normalize:
            return total
        return total / (labels != self.ignore_index).sum().clamp(min=1)


class JSDistillLoss(DistillLoss):
    """Generalized Jensen-Shannon divergence distillation loss.

    ``JSD_beta = beta * KL(P_t || M) + (1 - beta) * KL(P_s || M)`` with
    ``M = beta * P_t + (1 - beta) * P_s``; ``beta = 0`` is the forward KL
    ``KL(P_t || P_s)`` and ``beta = 1`` the reverse KL ``KL(P_s || P_t)``
    (see :func:`~jsd_loss.losses.generalized_jsd`). Scaled by ``temperature ** 2``.

    Args:
        beta (float): teacher weight in the mixture, in [0, 1]. Default: 0.5.
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100
    ):
        super().__init__(JSDivergence(beta), temperature, ignore_index)
        self.beta = beta


class KLDistillLoss(DistillLoss):
    """True KL divergence distillation loss (teacher entropy included).

    Differs from :class:`JSDistillLoss` only in the divergence, so a KL baseline and a JSD
    run are comparable in loss value and variance.

    Args:
        direction (str): ``"forward"`` for ``KL(P_t || P_s)``, ``"reverse"`` for
            ``KL(P_s || P_t)``. Default: "forward".
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self,
        direction: str = "forward",
        temperature: float = 1.0,
        ignore_index: int = -100,
    ):
        super().__init__(KLDivergence(direction), temperature, ignore_index)
        self.beta, self.direction = self.divergence.beta, direction


class AlphaBetaDistillLoss(DistillLoss):
    """Alpha-beta divergence distillation loss (ABKD): :class:`DistillLoss` of
    :class:`~jsd_loss.AlphaBetaDivergence` ``D_AB(P_t || P_s)``. ``(1, 0)`` is the forward KL
    ``KL(P_t || P_s)``, ``(0, 1)`` the reverse KL ``KL(P_s || P_t)``.

    Args:
        alpha (float): teacher exponent. Default: 0.5.
        beta (float): student exponent. Default: 0.5.
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self, alpha: float = 0.5, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100
    ):
        super().__init__(AlphaBetaDivergence(alpha, beta), temperature, ignore_index)


class AdaptiveKLDistillLoss(DistillLoss):
    """Adaptive KL distillation loss (AKL): :class:`DistillLoss` of
    :class:`~jsd_loss.AdaptiveKLDivergence`, ``w_head KL(P_t || P_s) + w_tail KL(P_s || P_t)``.

    Args:
        mu (float): teacher mass of the head, in [0, 1]. Default: 0.5.
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(self, mu: float = 0.5, temperature: float = 1.0, ignore_index: int = -100):
        super().__init__(AdaptiveKLDivergence(mu), temperature, ignore_index)


class TotalVariationDistillLoss(DistillLoss):
    """Total variation distillation loss: :class:`DistillLoss` of
    :class:`~jsd_loss.TotalVariationDivergence`, ``1/2 sum |P_t - P_s|``.

    Args:
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(self, temperature: float = 1.0, ignore_index: int = -100):
        super().__init__(TotalVariationDivergence(), temperature, ignore_index)


class SkewKLDistillLoss(DistillLoss):
    """Skew KL distillation loss (DistiLLM): :class:`DistillLoss` of
    :class:`~jsd_loss.SkewKLDivergence`, ``KL(P_t || a P_t + (1 - a) P_s)`` (forward) or
    ``KL(P_s || (1 - a) P_t + a P_s)`` (reverse).

    Args:
        alpha (float): skew ``a``, in [0, 1); 0 is the plain KL. Default: 0.1.
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
        temperature (float): softmax temperature for both distributions. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        direction: str = "forward",
        temperature: float = 1.0,
        ignore_index: int = -100,
    ):
        super().__init__(SkewKLDivergence(alpha, direction), temperature, ignore_index)
