"""Feature (intermediate-layer) distillation losses: how far a student's hidden features are
from a teacher's, per token, averaged over the tokens a mask keeps. Pure torch, float32 math
whatever the inputs' dtype (autocast switched off), finite for zero vectors."""

from typing import Optional

import torch
from torch import nn

from jsd_loss.losses._autocast import _autocast_off

FEATURE_LOSSES = ("mse", "cosine", "normalized_mse")
REDUCTIONS = ("mean", "sum", "none")
# keeps normalized_mse finite for an all-zero teacher vector and cosine for zero vectors
FEATURE_EPS = 1e-6


def _check_kind(kind: str) -> None:
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"feature loss kind must be one of {', '.join(FEATURE_LOSSES)}, got {kind!r}")


@_autocast_off
def feature_token_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """
    The per-token feature loss, in float32.

    * ``mse``: ``mean_d (s_d - t_d)^2``;
    * ``normalized_mse``: the MSE divided by the teacher's mean square, ``mean_d t_d^2 + eps``,
      so tokens and layers of very different scale weigh alike;
    * ``cosine``: ``1 - s.t / (|s| |t|)``, the denominator clamped at ``eps`` (0 for a zero vector
      with a finite gradient: 1 - 0 = 1).

    Args:
        student (torch.Tensor): student features, (..., D).
        teacher (torch.Tensor): teacher features of the same shape, a constant (detached).
        kind (str): ``mse``, ``cosine`` or ``normalized_mse``. Default: ``mse``

    Returns:
        torch.Tensor: float32, (...): one value per token.

    Raises:
        ValueError: for an unknown ``kind`` or shapes that differ.
    """
    _check_kind(kind)
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ in shape")
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        dot = (s * t).sum(-1)
        # rsqrt of the clamped product: no sqrt of 0 (an infinite gradient) on zero vectors
        return 1.0 - dot * torch.rsqrt(((s * s).sum(-1) * (t * t).sum(-1)).clamp_min(FEATURE_EPS**2))
    mse = (s - t).pow(2).mean(-1)
    if kind == "normalized_mse":
        return mse / (t.pow(2).mean(-1) + FEATURE_EPS)
    return mse


def feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    kind: str = "mse",
    reduction: str = "mean",
) -> torch.Tensor:
    """
    :func:`feature_token_loss` over the tokens ``mask`` keeps.

    Args:
        student (torch.Tensor): student features, (B, T, D) or (N, D), any float dtype.
        teacher (torch.Tensor): teacher features of the same shape, a constant.
        mask (Optional[torch.Tensor]): bool, (B, T) or (N,): True at the tokens that count
            (e.g. not padding). Default: None (every token)
        kind (str): ``mse``, ``cosine`` or ``normalized_mse``. Default: ``mse``
        reduction (str): ``mean`` over the kept tokens (0 when none is kept), their ``sum``, or
            ``none`` (per token, masked-out tokens 0). Default: ``mean``

    Returns:
        torch.Tensor: float32 scalar, or (B, T) / (N,) for ``reduction="none"``.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> t = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])
        >>> feature_loss(s, t, torch.tensor([[True, False]]))  # only the first token: (1 + 0) / 2
        tensor(0.5000)
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    per_token = feature_token_loss(student, teacher, kind)
    if mask is not None:
        if mask.shape != per_token.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match the features' tokens {tuple(per_token.shape)}")
        per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    count = per_token.numel() if mask is None else int(mask.sum())
    return total / max(count, 1)


class FeatureLoss(nn.Module):
    """
    :func:`feature_loss` of one ``kind`` as a module.

    Args:
        kind (str): ``mse``, ``cosine`` or ``normalized_mse``. Default: ``mse``
        reduction (str): ``mean``, ``sum`` or ``none``. Default: ``mean``
    """

    def __init__(self, kind: str = "mse", reduction: str = "mean"):
        super().__init__()
        _check_kind(kind)  # fail at construction, not at the first step
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.kind = kind
        self.reduction = reduction

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """See :func:`feature_loss` for the shapes."""
        return feature_loss(student, teacher, mask, self.kind, self.reduction)
