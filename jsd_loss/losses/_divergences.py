"""The divergences, as components for :class:`~jsd_loss.DistillLoss`,
:class:`~jsd_loss.DistillWithChunkedOutputLoss` and :class:`~jsd_loss.FusedLinearDivergenceLoss`.

Each holds its hyperparameters and calls the functional core; ``p`` is the teacher
distribution, ``q`` the student's, both over the last dim of the log-probabilities it is
given (a vocabulary, or the k + 1 buckets of a top-k teacher).
"""

import math
from typing import Tuple

import torch

from jsd_loss.losses._alpha_beta import alpha_beta_divergence, alpha_beta_divergence_and_grad
from jsd_loss.losses._divergence import Divergence, Teacher
from jsd_loss.losses._divergence_functional import (
    adaptive_kl,
    adaptive_kl_and_grad,
    skew_kl,
    skew_kl_and_grad,
    total_variation,
    total_variation_and_grad,
)
from jsd_loss.losses._functional import (
    _divergence_of_log_probs,
    _mixture_log_probs,
    generalized_jsd_and_grad,
    kl_direction_to_beta,
)
from jsd_loss.losses._topk import TopKDistribution
from jsd_loss.losses._topk_divergence import _topk_jsd_and_grad


class JSDivergence(Divergence):
    """Generalized Jensen-Shannon divergence ``beta KL(p || m) + (1 - beta) KL(q || m)``,
    ``m = beta p + (1 - beta) q``; ``beta = 0`` is the forward KL ``KL(p || q)``, ``beta = 1``
    the reverse KL ``KL(q || p)`` (see :func:`~jsd_loss.generalized_jsd`).

    Args:
        beta (float): teacher weight in the mixture, in [0, 1]. Default: 0.5.
    """

    def __init__(self, beta: float = 0.5):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return _divergence_of_log_probs(log_q, log_p, self.beta)

    def value_and_grad(self, log_q, log_p):
        """Gradient ``(1 - beta) q (log q - log m)``; ``-p`` at ``beta = 0``,
        ``q (log q - log p + 1)`` at ``beta = 1``."""
        value = self(log_q, log_p)
        if self.beta == 0.0:
            return value, -log_p.exp()
        if self.beta == 1.0:
            return value, log_q.exp() * (log_q - log_p + 1.0)
        log_m = _mixture_log_probs(log_p, log_q, self.beta)
        return value, (1.0 - self.beta) * log_q.exp() * (log_q - log_m)

    def logits_value_and_grad(
        self, student_logits: torch.Tensor, teacher: Teacher, temperature: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The fused in-place closed forms of :func:`~jsd_loss.generalized_jsd_and_grad`."""
        if isinstance(teacher, TopKDistribution):
            return _topk_jsd_and_grad(student_logits, teacher, self.beta, temperature)
        return generalized_jsd_and_grad(student_logits, teacher, self.beta, temperature)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class KLDivergence(JSDivergence):
    """True KL divergence: ``KL(p || q)`` (``"forward"``, mass-covering) or ``KL(q || p)``
    (``"reverse"``, mode-seeking); the endpoints of :class:`JSDivergence`.

    Args:
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
    """

    def __init__(self, direction: str = "forward"):
        super().__init__(kl_direction_to_beta(direction))
        self.direction = direction

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}"


class AlphaBetaDivergence(Divergence):
    """Alpha-beta divergence ``D_AB(p || q)`` (Cichocki, Cruces and Amari, 2011; ABKD)::

        -1/(alpha beta) sum (p^alpha q^beta - alpha/(alpha+beta) p^(alpha+beta)
                             - beta/(alpha+beta) q^(alpha+beta))

    with its limits on ``alpha = 0``, ``beta = 0`` and ``alpha + beta = 0``, continuous in both
    parameters (see :mod:`jsd_loss.losses._alpha_beta`). ``(1, 0)`` is the forward KL
    ``KL(p || q)``, ``(0, 1)`` the reverse KL ``KL(q || p)``, ``(0.5, 0.5)`` four times the
    squared Hellinger distance; ``alpha`` weighs the teacher, ``beta`` the student.

    Args:
        alpha (float): teacher exponent (any real). Default: 0.5.
        beta (float): student exponent (any real). Default: 0.5.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5):
        super().__init__()
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"alpha and beta must be finite, got {alpha} and {beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return alpha_beta_divergence(log_q, log_p, self.alpha, self.beta)

    def value_and_grad(self, log_q, log_p):
        return alpha_beta_divergence_and_grad(log_q, log_p, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class AdaptiveKLDivergence(Divergence):
    """Adaptive KL (AKL, Wu et al., 2024): ``w_head KL(p || q) + w_tail KL(q || p)``.

    The head is the teacher's most probable tokens, in order, while their cumulative
    probability is at most ``mu`` (at least the top one); ``w_head = sum_head |p - q| /
    sum_all |p - q|``, ``w_tail = 1 - w_head``, both without gradient (as in the authors' code).

    Args:
        mu (float): head mass threshold, in [0, 1]. Default: 0.5.
    """

    def __init__(self, mu: float = 0.5):
        super().__init__()
        if not 0.0 <= mu <= 1.0:
            raise ValueError(f"mu must be in [0, 1], got {mu}")
        self.mu = mu

    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return adaptive_kl(log_q, log_p, self.mu)

    def value_and_grad(self, log_q, log_p):
        return adaptive_kl_and_grad(log_q, log_p, self.mu)

    def extra_repr(self) -> str:
        return f"mu={self.mu}"


class TotalVariationDivergence(Divergence):
    """Total variation distance ``1/2 sum |p - q|``, in [0, 1]."""

    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return total_variation(log_q, log_p)

    def value_and_grad(self, log_q, log_p):
        return total_variation_and_grad(log_q, log_p)


class SkewKLDivergence(Divergence):
    """Skew KL of DistiLLM (Ko et al., 2024): ``KL(p || alpha p + (1 - alpha) q)``
    (``"forward"``) or ``KL(q || (1 - alpha) p + alpha q)`` (``"reverse"``). ``alpha = 0`` is
    the plain KL of that direction; any ``alpha > 0`` keeps it finite where one side is 0.

    Args:
        alpha (float): skew, in [0, 1). Default: 0.1.
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
    """

    def __init__(self, alpha: float = 0.1, direction: str = "forward"):
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        kl_direction_to_beta(direction)  # validates
        self.alpha, self.direction = alpha, direction

    def forward(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return skew_kl(log_q, log_p, self.alpha, self.direction)

    def value_and_grad(self, log_q, log_p):
        return skew_kl_and_grad(log_q, log_p, self.alpha, self.direction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, direction={self.direction!r}"
