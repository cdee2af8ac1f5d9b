"""The autograd function of the fused-linear losses: the chunk loop of
:mod:`jsd_loss.losses._fused_linear`, its closed-form gradients and their backward."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from jsd_loss.losses._autocast import _autocast_off
from jsd_loss.losses._divergence import Divergence
from jsd_loss.losses._fused_teachers import FusedTeachers
from jsd_loss.losses._topk import TopKDistribution


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
        divergence: Divergence,
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
            elif isinstance(teacher_hidden, FusedTeachers):  # several teachers: this chunk's fusion
                t_rows = teacher_hidden.logits(idx, temperature)
            else:
                t_rows = teacher_hidden[idx].to(teacher_weight.dtype) @ teacher_weight.t()
            kd_tok, g_logits = divergence.logits_value_and_grad(s_logits, t_rows, temperature)
            del t_rows
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
