"""Fused output projection + distillation loss that never materialises ``(tokens, vocab)``.

The student's and teacher's logits are computed from their final hidden states one
token chunk at a time; each chunk's loss and closed-form gradients (w.r.t. the student
hidden states and output weight) are computed immediately and the chunk's logits are
freed. The backward pass only rescales the stored gradients. Pure PyTorch: runs on CPU
and CUDA. Same idea as Liger-Kernel's fused-linear JSD, without Triton.

Under ``torch.autocast`` the logit and gradient matmuls run in its dtype, cast explicitly
(autocast itself is off inside), the divergence and CE math in float32, and the gradients
accumulate in float32 (one bf16 rounding per chunk); without it, each model's matmuls run in
its own weight dtype.
"""

from typing import Optional, Tuple, Union

import torch

from jsd_loss.losses._autocast import _autocast_dtype
from jsd_loss.losses._divergence import Divergence, as_divergence
from jsd_loss.losses._divergences import JSDivergence, KLDivergence
from jsd_loss.losses._functional import _check_temperature
from jsd_loss.losses._fused_teachers import FusedTeachers
from jsd_loss.losses._fused_linear_function import _FusedLinearDistillFunction
from jsd_loss.losses._interface import FusedLinearDistillLoss
from jsd_loss.losses._topk import TopKDistribution, _topk_for_tokens


class FusedLinearDivergenceLoss(FusedLinearDistillLoss):
    """:class:`~jsd_loss.DistillLoss` of any divergence fused with the output projections
    (a :class:`~jsd_loss.FusedLinearDistillLoss`): peak extra memory ``O(chunk_size * vocab)``
    instead of ``O(tokens * vocab)``. Each chunk's gradient is the divergence's closed form
    (:meth:`~jsd_loss.Divergence.logits_value_and_grad`).

    Example (a torchtune config)::

        kd_loss:
          _component_: jsd_loss.FusedLinearDivergenceLoss
          divergence: {_component_: jsd_loss.SkewKLDivergence, alpha: 0.1}
          return_ce: true

    Args:
        divergence (Divergence): the divergence, e.g. :class:`~jsd_loss.AlphaBetaDivergence`, or a
            config node ``{_component_: ..., ...}`` that builds one.
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
        chunk_size (int): tokens per chunk. Default: 256.
        return_ce (bool): also return the hard-label cross-entropy, computed in the same
            pass from the same logits. Default: False.
    """

    def __init__(
        self,
        divergence: Divergence,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int = 256,
        return_ce: bool = False,
    ):
        super().__init__()
        _check_temperature(temperature)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.divergence = as_divergence(divergence)
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size
        self.return_ce = return_ce

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: Union[torch.Tensor, TopKDistribution, FusedTeachers],
        teacher_weight: Optional[torch.Tensor],
        labels: torch.Tensor,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            student_hidden (torch.Tensor): student final hidden states, shape (N, D)
                (or (B, T, D)).
            student_weight (torch.Tensor): student output projection, laid out as
                ``nn.Linear.weight``: shape (V, D).
            teacher_hidden (Union[torch.Tensor, TopKDistribution]): teacher final hidden
                states, shape (N, Dt) (or (B, T, Dt)), a constant (no gradient); or a
                top-k + tail teacher (N, k) (or (B, T, k)) already at ``temperature``; or
                several teachers' hidden states and output weights, fused chunk by chunk.
            teacher_weight (Optional[torch.Tensor]): teacher output projection, shape
                (V, Dt), a constant; ``None`` with a top-k teacher or several teachers.
            labels (torch.Tensor): shape (N,) (or (B, T)); ``ignore_index`` tokens are
                skipped entirely.

        Returns:
            torch.Tensor: the KD loss, mean over unmasked tokens (0 if none); with
            ``return_ce=True`` a tuple ``(kd_loss, ce_loss)`` where ``ce_loss`` is the
            hard-label cross-entropy of the student on ``labels`` (temperature 1).
        """
        if isinstance(teacher_hidden, TopKDistribution):
            return self._forward_topk(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
        if isinstance(teacher_hidden, FusedTeachers):
            return self._forward_fused(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
        student_hidden = student_hidden.reshape(-1, student_hidden.size(-1))
        teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.size(-1))
        labels = labels.reshape(-1)
        if student_weight.size(0) != teacher_weight.size(0):
            raise ValueError(
                f"student vocab size {student_weight.size(0)} differs from teacher vocab "
                f"size {teacher_weight.size(0)}"
            )
        if student_hidden.size(-1) != student_weight.size(1):
            raise ValueError(
                f"student hidden dim {student_hidden.size(-1)} does not match the output "
                f"weight of shape {tuple(student_weight.shape)}"
            )
        if teacher_hidden.size(-1) != teacher_weight.size(1):
            raise ValueError(
                f"teacher hidden dim {teacher_hidden.size(-1)} does not match the output "
                f"weight of shape {tuple(teacher_weight.shape)}"
            )
        if not student_hidden.size(0) == teacher_hidden.size(0) == labels.numel():
            raise ValueError(
                f"token counts differ: student {student_hidden.size(0)}, teacher "
                f"{teacher_hidden.size(0)}, labels {labels.numel()}"
            )
        return _FusedLinearDistillFunction.apply(
            student_hidden, student_weight, teacher_hidden.detach(), teacher_weight.detach(),
            labels, self.divergence, self.temperature, self.ignore_index, self.chunk_size,
            self.return_ce, _autocast_dtype(student_hidden.device),
        )

    def _forward_topk(self, student_hidden, student_weight, teacher, teacher_weight, labels):
        """:meth:`forward` for a top-k + tail teacher: its rows replace the teacher logits."""
        student_hidden = _flat_student(student_hidden, student_weight, teacher_weight, "the teacher is a TopKDistribution")
        labels = labels.reshape(-1)
        teacher = _topk_for_tokens(
            teacher, student_hidden.size(0), labels, self.ignore_index,
            student_weight.size(0), student_hidden.device,
        )
        return _FusedLinearDistillFunction.apply(
            student_hidden, student_weight, teacher, None, labels, self.divergence,
            self.temperature, self.ignore_index, self.chunk_size, self.return_ce,
            _autocast_dtype(student_hidden.device),
        )

    def _forward_fused(self, student_hidden, student_weight, teachers, teacher_weight, labels):
        """:meth:`forward` for several teachers: each chunk's teacher logits are their fusion."""
        student_hidden = _flat_student(student_hidden, student_weight, teacher_weight, "the teachers come as FusedTeachers")
        if student_hidden.size(0) != labels.numel():
            raise ValueError(f"token counts differ: student {student_hidden.size(0)}, labels {labels.numel()}")
        matmul_dtype = _autocast_dtype(student_hidden.device)
        teachers = teachers.for_tokens(labels, self.ignore_index, student_weight.size(0), self.chunk_size,
                                       matmul_dtype)
        return _FusedLinearDistillFunction.apply(
            student_hidden, student_weight, teachers, None, labels.reshape(-1), self.divergence,
            self.temperature, self.ignore_index, self.chunk_size, self.return_ce, matmul_dtype,
        )


def _flat_student(student_hidden, student_weight, teacher_weight, teacher_is: str) -> torch.Tensor:
    """The student hidden states as (N, D), checked against its output weight, for a teacher
    that brings its own logits (``teacher_weight`` must then be None)."""
    if teacher_weight is not None:
        raise ValueError(f"teacher_weight must be None when {teacher_is}")
    student_hidden = student_hidden.reshape(-1, student_hidden.size(-1))
    if student_hidden.size(-1) != student_weight.size(1):
        raise ValueError(
            f"student hidden dim {student_hidden.size(-1)} does not match the output "
            f"weight of shape {tuple(student_weight.shape)}"
        )
    return student_hidden


class FusedLinearJSDistillLoss(FusedLinearDivergenceLoss):
    """:class:`~jsd_loss.JSDistillLoss` fused with the output projections.

    Peak extra memory is ``O(chunk_size * vocab)`` instead of ``O(tokens * vocab)``.

    Args:
        beta (float): teacher weight in the JSD mixture. Default: 0.5.
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
        chunk_size (int): tokens per chunk. Default: 256.
        return_ce (bool): also return the hard-label cross-entropy, computed in the same
            pass from the same logits. Default: False.
    """

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int = 256,
        return_ce: bool = False,
    ):
        super().__init__(JSDivergence(beta), temperature, ignore_index, chunk_size, return_ce)
        self.beta = beta


class FusedLinearKLDistillLoss(FusedLinearDivergenceLoss):
    """:class:`~jsd_loss.KLDistillLoss` (true KL) fused with the output projections.

    Args:
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
        chunk_size (int): tokens per chunk. Default: 256.
        return_ce (bool): also return the hard-label cross-entropy. Default: False.
    """

    def __init__(
        self,
        direction: str = "forward",
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int = 256,
        return_ce: bool = False,
    ):
        super().__init__(KLDivergence(direction), temperature, ignore_index, chunk_size, return_ce)
        self.beta, self.direction = self.divergence.beta, direction
