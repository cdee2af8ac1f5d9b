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
import torch.nn.functional as F

from jsd_loss.losses._autocast import _autocast_dtype, _autocast_off
from jsd_loss.losses._functional import (
    _check_args,
    generalized_jsd_and_grad,
    kl_direction_to_beta,
)
from jsd_loss.losses._interface import FusedLinearDistillLoss
from jsd_loss.losses._topk import TopKDistribution, _topk_for_tokens
from jsd_loss.losses._topk_divergence import _topk_jsd_and_grad


def _ce_and_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed hard-label cross-entropy and its gradient w.r.t. the logits."""
    log_p = F.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)
    ce = -log_p.gather(-1, targets.unsqueeze(-1)).sum()
    grad = log_p.exp_()
    grad.scatter_add_(-1, targets.unsqueeze(-1), -torch.ones_like(grad[:, :1]))
    return ce, grad


def _is_one(t: torch.Tensor) -> bool:
    return t.numel() == 1 and bool(t == 1)


class _FusedLinearDistillFunction(torch.autograd.Function):
    @staticmethod
    @_autocast_off
    def forward(
        ctx,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        labels: torch.Tensor,
        beta: float,
        temperature: float,
        ignore_index: int,
        chunk_size: int,
        with_ce: bool,
        matmul_dtype: Optional[torch.dtype],
    ):
        keep = (labels != ignore_index).nonzero().squeeze(-1)
        n_valid = keep.numel()
        denom = max(n_valid, 1)
        math_dtype = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
        need_h = student_hidden.requires_grad
        need_w = student_weight.requires_grad
        # the operands of every matmul, cast once: autocast's dtype, else each weight's own
        s_weight = student_weight.to(matmul_dtype or student_weight.dtype)
        if teacher_weight is not None:
            teacher_weight = teacher_weight.to(matmul_dtype or teacher_weight.dtype)

        grads = {}
        for name in ("kd", "ce") if with_ce else ("kd",):
            grads[name] = (
                torch.zeros_like(student_hidden, dtype=math_dtype) if need_h else None,
                torch.zeros_like(student_weight, dtype=math_dtype) if need_w else None,
            )
        totals = {name: torch.zeros((), dtype=math_dtype, device=labels.device) for name in grads}

        for start in range(0, n_valid, chunk_size):
            idx = keep[start : start + chunk_size]
            h = student_hidden[idx].to(s_weight.dtype)
            s_logits = h @ s_weight.t()
            if isinstance(teacher_hidden, TopKDistribution):
                t_rows = teacher_hidden.select(idx)
                kd_tok, g_logits = _topk_jsd_and_grad(s_logits, t_rows, beta, temperature)
            else:
                t_logits = teacher_hidden[idx].to(teacher_weight.dtype) @ teacher_weight.t()
                kd_tok, g_logits = generalized_jsd_and_grad(s_logits, t_logits, beta, temperature)
                del t_logits
            chunk_results = {"kd": (kd_tok.sum(), g_logits)}
            if with_ce:
                chunk_results["ce"] = _ce_and_grad(s_logits, labels[idx])
            del s_logits
            for name, (total, g) in chunk_results.items():
                totals[name] += total
                g = g.div_(denom).to(s_weight.dtype)
                g_hidden, g_weight = grads[name]
                if need_h:
                    g_hidden.index_copy_(0, idx, (g @ s_weight).to(math_dtype))
                if need_w:
                    if g_weight.dtype == g.dtype:
                        g_weight.addmm_(g.t(), h)
                    else:
                        g_weight.add_((g.t() @ h).to(math_dtype))

        ctx.with_ce = with_ce
        ctx.save_for_backward(
            *[t if t is not None else torch.empty(0) for pair in grads.values() for t in pair]
        )
        ctx.need = (need_h, need_w)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype)
        outs = tuple(totals[name] / denom for name in grads)
        return outs if with_ce else outs[0]

    @staticmethod
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        need_h, need_w = ctx.need
        grad_h = grad_w = None
        for i, grad_out in enumerate(grad_outputs):
            if grad_out is None:
                continue
            g_hidden, g_weight = saved[2 * i], saved[2 * i + 1]
            if need_h:
                # grad_out is 1 when this loss is the whole objective: hand the stored
                # gradient over instead of copying it
                term = g_hidden if _is_one(grad_out) else g_hidden * grad_out
                grad_h = term if grad_h is None else grad_h + term
            if need_w:
                term = g_weight if _is_one(grad_out) else g_weight * grad_out
                grad_w = term if grad_w is None else grad_w + term
        dtype_h, dtype_w = ctx.dtypes
        return (
            grad_h.to(dtype_h) if grad_h is not None else None,
            grad_w.to(dtype_w) if grad_w is not None else None,
            *([None] * 9),
        )


class _FusedLinearDivergenceLoss(FusedLinearDistillLoss):
    def __init__(
        self,
        beta: float,
        temperature: float,
        ignore_index: int,
        chunk_size: int,
        return_ce: bool,
    ):
        super().__init__()
        _check_args(beta, temperature)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.beta = beta
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size
        self.return_ce = return_ce

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: Union[torch.Tensor, TopKDistribution],
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
                top-k + tail teacher (N, k) (or (B, T, k)) already at ``temperature``.
            teacher_weight (Optional[torch.Tensor]): teacher output projection, shape
                (V, Dt), a constant; ``None`` with a top-k teacher.
            labels (torch.Tensor): shape (N,) (or (B, T)); ``ignore_index`` tokens are
                skipped entirely.

        Returns:
            torch.Tensor: the KD loss, mean over unmasked tokens (0 if none); with
            ``return_ce=True`` a tuple ``(kd_loss, ce_loss)`` where ``ce_loss`` is the
            hard-label cross-entropy of the student on ``labels`` (temperature 1).
        """
        if isinstance(teacher_hidden, TopKDistribution):
            return self._forward_topk(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
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
            labels, self.beta, self.temperature, self.ignore_index, self.chunk_size,
            self.return_ce, _autocast_dtype(student_hidden.device),
        )

    def _forward_topk(self, student_hidden, student_weight, teacher, teacher_weight, labels):
        """:meth:`forward` for a top-k + tail teacher: its rows replace the teacher logits."""
        if teacher_weight is not None:
            raise ValueError("teacher_weight must be None when the teacher is a TopKDistribution")
        student_hidden = student_hidden.reshape(-1, student_hidden.size(-1))
        if student_hidden.size(-1) != student_weight.size(1):
            raise ValueError(
                f"student hidden dim {student_hidden.size(-1)} does not match the output "
                f"weight of shape {tuple(student_weight.shape)}"
            )
        labels = labels.reshape(-1)
        teacher = _topk_for_tokens(
            teacher, student_hidden.size(0), labels, self.ignore_index,
            student_weight.size(0), student_hidden.device,
        )
        return _FusedLinearDistillFunction.apply(
            student_hidden, student_weight, teacher, None, labels, self.beta,
            self.temperature, self.ignore_index, self.chunk_size, self.return_ce,
            _autocast_dtype(student_hidden.device),
        )


class FusedLinearJSDistillLoss(_FusedLinearDivergenceLoss):
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
        super().__init__(beta, temperature, ignore_index, chunk_size, return_ce)


class FusedLinearKLDistillLoss(_FusedLinearDivergenceLoss):
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
        super().__init__(
            kl_direction_to_beta(direction), temperature, ignore_index, chunk_size, return_ce
        )
        self.direction = direction
