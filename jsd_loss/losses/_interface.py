"""The interface of KD losses fused with the output projection."""

import abc
from typing import Optional, Tuple, Union

import torch
from torch import nn

from jsd_loss.losses._topk import TopKDistribution


class FusedLinearDistillLoss(nn.Module, metaclass=abc.ABCMeta):
    """
    A KD loss that takes the models' final hidden states and output-projection weights
    instead of their logits, so that it can form the logits a chunk of tokens at a time and
    never hold ``(tokens, vocab)``. A recipe recognises such a loss by this base class (a
    loss that does not declare it receives logits): it runs both models without their
    output projection and calls :meth:`forward` with what they would have multiplied.
    With an offline top-k teacher (a :class:`~jsd_loss.losses.TopKDistribution`) the
    teacher is not run: its distribution takes the place of ``teacher_hidden`` and
    ``teacher_weight`` is ``None``.

    Subclasses implement :meth:`forward` and set :attr:`return_ce`.

    Attributes:
        return_ce (bool): :meth:`forward` also returns the student's hard-label
            cross-entropy on ``labels`` (temperature 1) from the same pass; the recipe then
            uses it as the CE term instead of computing it again.
        ignore_index (int): label value of tokens that do not contribute.
    """

    return_ce: bool = False
    ignore_index: int = -100

    @abc.abstractmethod
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
            student_hidden (torch.Tensor): student final hidden states, (N, D) or (B, T, D).
            student_weight (torch.Tensor): student output projection as ``nn.Linear.weight``, (V, D).
            teacher_hidden (Union[torch.Tensor, TopKDistribution]): teacher final hidden
                states, (N, Dt) or (B, T, Dt), a constant; or a top-k + tail teacher with
                fields (N, k) or (B, T, k), already at the loss's temperature.
            teacher_weight (Optional[torch.Tensor]): teacher output projection, (V, Dt), a
                constant; ``None`` when ``teacher_hidden`` is a top-k teacher.
            labels (torch.Tensor): next-token labels, (N,) or (B, T).

        Returns:
            Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]: the KD loss, mean over
            the tokens whose label is not ``ignore_index``; ``(kd_loss, ce_loss)`` when
            :attr:`return_ce`.
        """
