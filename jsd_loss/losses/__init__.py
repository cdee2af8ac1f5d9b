from jsd_loss.losses._chunked import (
    JSDistillWithChunkedOutputLoss,
    KLDistillWithChunkedOutputLoss,
)
from jsd_loss.losses._distill import JSDistillLoss, KLDistillLoss
from jsd_loss.losses._feature import FEATURE_LOSSES, FeatureLoss, feature_loss, feature_token_loss
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
from jsd_loss.losses._topk import TopKDistribution, topk_from_logits
from jsd_loss.losses._topk_divergence import (
    topk_generalized_jsd,
    topk_generalized_jsd_and_grad,
    topk_student_divergence,
)

__all__ = [
    "FEATURE_LOSSES",
    "FeatureLoss",
    "FusedLinearDistillLoss",
    "FusedLinearJSDistillLoss",
    "FusedLinearKLDistillLoss",
    "JSDistillLoss",
    "JSDistillWithChunkedOutputLoss",
    "KLDistillLoss",
    "KLDistillWithChunkedOutputLoss",
    "TopKDistribution",
    "feature_loss",
    "feature_token_loss",
    "generalized_jsd",
    "generalized_jsd_and_grad",
    "kl_divergence",
    "student_divergence",
    "topk_from_logits",
    "topk_generalized_jsd",
    "topk_generalized_jsd_and_grad",
    "topk_student_divergence",
]
