from jsd_loss.losses._chunked import (
    JSDistillWithChunkedOutputLoss,
    KLDistillWithChunkedOutputLoss,
)
from jsd_loss.losses._distill import JSDistillLoss, KLDistillLoss
from jsd_loss.losses._functional import (
    generalized_jsd,
    generalized_jsd_and_grad,
    kl_divergence,
    student_divergence,
)
from jsd_loss.losses._fused_linear import (
    FusedLinearJSDistillLoss,
    FusedLinearKLDistillLoss,
)
from jsd_loss.losses._interface import FusedLinearDistillLoss

__all__ = [
    "FusedLinearDistillLoss",
    "FusedLinearJSDistillLoss",
    "FusedLinearKLDistillLoss",
    "JSDistillLoss",
    "JSDistillWithChunkedOutputLoss",
    "KLDistillLoss",
    "KLDistillWithChunkedOutputLoss",
    "generalized_jsd",
    "generalized_jsd_and_grad",
    "kl_divergence",
    "student_divergence",
]
