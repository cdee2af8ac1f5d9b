from jsd_loss.losses._alpha_beta import alpha_beta_divergence, alpha_beta_divergence_and_grad
from jsd_loss.losses._chunked import (
    DistillWithChunkedOutputLoss,
    JSDistillWithChunkedOutputLoss,
    KLDistillWithChunkedOutputLoss,
)
from jsd_loss.losses._distill import (
    AdaptiveKLDistillLoss,
    AlphaBetaDistillLoss,
    DistillLoss,
    JSDistillLoss,
    KLDistillLoss,
    SkewKLDistillLoss,
    TotalVariationDistillLoss,
)
from jsd_loss.losses._divergence import Divergence, divergence_of_logits, student_divergence_of_logits
from jsd_loss.losses._divergence_functional import (
    adaptive_kl,
    adaptive_kl_and_grad,
    skew_kl,
    skew_kl_and_grad,
    total_variation,
    total_variation_and_grad,
)
from jsd_loss.losses._divergences import (
    AdaptiveKLDivergence,
    AlphaBetaDivergence,
    JSDivergence,
    KLDivergence,
    SkewKLDivergence,
    TotalVariationDivergence,
)
from jsd_loss.losses._feature import FEATURE_LOSSES, FeatureLoss, feature_loss, feature_token_loss
from jsd_loss.losses._functional import (
    generalized_jsd,
    generalized_jsd_and_grad,
    kl_divergence,
    student_divergence,
)
from jsd_loss.losses._fused_teachers import FusedTeachers
from jsd_loss.losses._fusion import FUSIONS, check_fusion, fuse_logits, sequence_ce, token_ce
from jsd_loss.losses._fused_linear import (
    FusedLinearDivergenceLoss,
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
    "FUSIONS",
    "AdaptiveKLDistillLoss",
    "AdaptiveKLDivergence",
    "AlphaBetaDistillLoss",
    "AlphaBetaDivergence",
    "DistillLoss",
    "DistillWithChunkedOutputLoss",
    "Divergence",
    "FeatureLoss",
    "FusedLinearDistillLoss",
    "FusedLinearDivergenceLoss",
    "FusedLinearJSDistillLoss",
    "FusedLinearKLDistillLoss",
    "FusedTeachers",
    "JSDistillLoss",
    "JSDistillWithChunkedOutputLoss",
    "JSDivergence",
    "KLDistillLoss",
    "KLDistillWithChunkedOutputLoss",
    "KLDivergence",
    "SkewKLDistillLoss",
    "SkewKLDivergence",
    "TopKDistribution",
    "TotalVariationDistillLoss",
    "TotalVariationDivergence",
    "adaptive_kl",
    "adaptive_kl_and_grad",
    "alpha_beta_divergence",
    "alpha_beta_divergence_and_grad",
    "check_fusion",
    "divergence_of_logits",
    "feature_loss",
    "feature_token_loss",
    "fuse_logits",
    "generalized_jsd",
    "generalized_jsd_and_grad",
    "kl_divergence",
    "sequence_ce",
    "skew_kl",
    "skew_kl_and_grad",
    "student_divergence",
    "student_divergence_of_logits",
    "token_ce",
    "topk_from_logits",
    "topk_generalized_jsd",
    "topk_generalized_jsd_and_grad",
    "topk_student_divergence",
    "total_variation",
    "total_variation_and_grad",
]
