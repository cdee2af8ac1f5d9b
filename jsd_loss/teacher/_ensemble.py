"""Several frozen teachers called as one: the fused teacher of :mod:`jsd_loss.losses._fusion`
(mixture, product or min_ce), for the KD step's logits and, through
:class:`~jsd_loss.losses.FusedTeachers`, for a fused-linear loss."""

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from jsd_loss.losses import FusedTeachers, check_fusion, fuse_logits


class TeacherEnsemble(nn.Module):
    """
    Teachers of one vocabulary (their sizes and architectures may differ), each with a name
    and a weight. Called like a teacher model it returns the fused logits; the members are run
    one after another, so their logits are fused as they come (at most the running fusion and
    one member's logits are held besides the member's own activations).

    Args:
        models (Sequence[nn.Module]): the teachers, frozen, in eval mode.
        names (Sequence[str]): one distinct name per teacher (for messages and the run's identity).
        weights (Sequence[float]): one positive weight per teacher (normalised; unused by min_ce).
        fusion (str): ``mixture``, ``product`` or ``min_ce``. Default: mixture
    """

    def __init__(
        self, models: Sequence[nn.Module], names: Sequence[str], weights: Sequence[float], fusion: str = "mixture"
    ):
        super().__init__()
        self.weights = check_fusion(fusion, weights)
        if not len(models) == len(names) == len(self.weights):
            raise ValueError(f"{len(models)} teachers, {len(names)} names and {len(self.weights)} weights")
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be distinct, got {list(names)}")
        self.members = nn.ModuleList(models)
        self.names = tuple(names)
        self.fusion = fusion

    def set_num_output_chunks(self, num_output_chunks: int) -> None:
        """Every member returns its logits in ``num_output_chunks`` chunks along the sequence."""
        for model in self.members:
            model.set_num_output_chunks(num_output_chunks)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        ignore_index: int = -100,
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            tokens (torch.Tensor): input tokens, (B, T).
            mask (Optional[torch.Tensor]): attention mask, as the members take it. Default: None
            input_pos (Optional[torch.Tensor]): positions. Default: None
            labels (Optional[torch.Tensor]): next-token labels, (B, T); min_ce needs them.
                Default: None
            temperature (float): the KD loss's temperature (mixture depends on it). Default: 1.0
            ignore_index (int): label value of untrained positions. Default: -100

        Returns:
            Union[torch.Tensor, List[torch.Tensor]]: fused logits (B, T, V), float32 (float64
            for float64 members), or their chunks when the members are set to chunk; one
            member's logits unchanged.
        """
        outputs = (model(tokens, mask=mask, input_pos=input_pos) for model in self.members)
        return fuse_logits(outputs, self.weights, self.fusion, temperature, labels, ignore_index)

    def fused_hidden(self, hidden: Sequence[torch.Tensor], weight: Sequence[torch.Tensor]) -> FusedTeachers:
        """What a fused-linear loss takes as ``teacher_hidden``: the members' final hidden
        states, (B, T, D_i) each, and output weights, (V, D_i) each, in member order."""
        return FusedTeachers(tuple(hidden), tuple(weight), self.weights, self.fusion)


def teacher_members(teacher: Optional[nn.Module]) -> List[nn.Module]:
    """The models of a teacher: an ensemble's members, a single teacher itself, none for None."""
    if teacher is None:
        return []
    return list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]
