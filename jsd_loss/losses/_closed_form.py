"""The autograd node the memory-lean per-token losses share."""

from typing import Callable, Tuple

import torch


class _ClosedFormDivergence(torch.autograd.Function):
    """Per-token divergence whose backward reuses the gradient computed in forward.

    Saves one ``(N, V)`` tensor instead of the half-dozen intermediates autograd keeps,
    which is what makes the chunked losses cheap in memory. The teacher gets no gradient.
    ``value_and_grad(student_logits, teacher)`` returns the per-token divergence (N,) and
    its gradient w.r.t. the student logits (N, V).
    """

    @staticmethod
    def forward(
        ctx,
        student_logits: torch.Tensor,
        teacher,
        value_and_grad: Callable[..., Tuple[torch.Tensor, torch.Tensor]],
    ):
        div, grad = value_and_grad(student_logits, teacher)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = student_logits.dtype
        return div

    @staticmethod
    def backward(ctx, grad_div):
        (grad,) = ctx.saved_tensors
        return (grad * grad_div.unsqueeze(-1)).to(ctx.logits_dtype), None, None
