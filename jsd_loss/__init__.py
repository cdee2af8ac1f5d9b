"""jsd-distill: Jensen-Shannon divergence knowledge distillation for torchtune."""

from jsd_loss.losses import (
    FusedLinearDistillLoss,
    FusedLinearJSDistillLoss,
    FusedLinearKLDistillLoss,
    JSDistillLoss,
    JSDistillWithChunkedOutputLoss,
    KLDistillLoss,
    KLDistillWithChunkedOutputLoss,
    TopKDistribution,
    generalized_jsd,
    generalized_jsd_and_grad,
    kl_divergence,
    student_divergence,
    topk_from_logits,
    topk_generalized_jsd,
    topk_generalized_jsd_and_grad,
    topk_student_divergence,
)

__version__ = "0.1.0"

__all__ = [
    "FusedLinearDistillLoss",
    "FusedLinearJSDistillLoss",
    "FusedLinearKLDistillLoss",
    "JSDistillLoss",
    "JSDistillWithChunkedOutputLoss",
    "KLDistillLoss",
    "KLDistillWithChunkedOutputLoss",
    "TopKDistribution",
    "generalized_jsd",
    "generalized_jsd_and_grad",
    "kl_divergence",
    "student_divergence",
    "topk_from_logits",
    "topk_generalized_jsd",
    "topk_generalized_jsd_and_grad",
    "topk_student_divergence",
]
