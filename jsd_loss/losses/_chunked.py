"""Drop-ins for torchtune's ``ForwardKLWithChunkedOutputLoss``."""

from typing import List, Union

import torch
from torch import nn

from jsd_loss.losses._distill import DistillLoss
from jsd_loss.losses._divergence import Divergence
from jsd_loss.losses._divergences import JSDivergence, KLDivergence
from jsd_loss.losses._topk import TopKDistribution, _check_fields


class DistillWithChunkedOutputLoss(nn.Module):
    """:class:`~jsd_loss.DistillLoss` of any divergence over the chunked logits of a torchtune
    model; a drop-in for torchtune's ``ForwardKLWithChunkedOutputLoss`` (same call signature,
    ``kd_loss`` in a KD config, ``num_output_chunks`` matching the CE loss's).

    torchtune's ``TransformerDecoder.chunked_output`` splits the sequence with
    ``Tensor.chunk``, while other code uses ``tensor_split``; the two disagree when the
    sequence length is not divisible by the number of chunks. The labels are therefore
    split by the sizes of the chunks actually received, and the loss is normalised once
    by the global number of unmasked tokens. A top-k + tail teacher comes as one
    :class:`~jsd_loss.losses.TopKDistribution` over the whole sequence and is split the
    same way. Each chunk's backward reuses the closed-form gradient its forward computed.

    Args:
        divergence (Divergence): the divergence, e.g. :class:`~jsd_loss.SkewKLDivergence`, or a
            config node ``{_component_: ..., ...}`` that builds one.
        num_output_chunks (int): number of chunks the model's output is split into.
            Default: 8.
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self,
        divergence: Divergence,
        num_output_chunks: int = 8,
        temperature: float = 1.0,
        ignore_index: int = -100,
    ):
        super().__init__()
        if num_output_chunks < 1:
            raise ValueError(f"num_output_chunks must be >= 1, got {num_output_chunks}")
        self.num_output_chunks = num_output_chunks
        self.token_loss = DistillLoss(divergence, temperature, ignore_index)
        self.temperature = temperature
        self.ignore_index = ignore_index

    @property
    def divergence(self) -> Divergence:
        return self.token_loss.divergence

    def forward(
        self,
        student_logits: List[torch.Tensor],
        teacher_logits: Union[List[torch.Tensor], TopKDistribution],
        labels: torch.Tensor,
        normalize: bool = True,
    ) -> torch.Tensor:
        """
        Args:
            student_logits (List[torch.Tensor]): chunks of student logits, each of shape
                (batch_size, num_tokens_in_chunk, vocab_size), concatenating along dim 1 to
                (batch_size, num_tokens, vocab_size).
            teacher_logits (Union[List[torch.Tensor], TopKDistribution]): teacher chunks
                with the same shapes, or one top-k + tail teacher of shape
                (batch_size, num_tokens, k) covering the whole sequence, already at
                ``temperature``; it is split by the sizes of the student chunks.
            labels (torch.Tensor): labels of shape (batch_size, num_tokens).
            normalize (bool): divide by the number of unmasked tokens. Default: True.

        Returns:
            torch.Tensor: scalar loss; 0 when every token is masked.
        """
        topk = isinstance(teacher_logits, TopKDistribution)
        if isinstance(student_logits, torch.Tensor):
            student_logits = [student_logits]
            teacher_logits = teacher_logits if topk else [teacher_logits]
        if topk:
            _check_fields(teacher_logits)
            if teacher_logits.shape != labels.shape:
                raise ValueError(
                    f"the top-k teacher of shape {tuple(teacher_logits.ids.shape)} does not "
                    f"cover the labels of shape {tuple(labels.shape)}"
                )
        elif len(student_logits) != len(teacher_logits):
            raise ValueError(
                f"got {len(student_logits)} student chunks but {len(teacher_logits)} "
                "teacher chunks"
            )
        sizes = [chunk.size(1) for chunk in student_logits]
        if sum(sizes) != labels.size(1):
            raise ValueError(
                f"the logit chunks cover {sum(sizes)} tokens but labels have "
                f"{labels.size(1)}"
            )
        if topk:
            teacher_logits = teacher_logits.split(sizes, dim=1)
        total = sum(
            self.token_loss.token_sum(s, t, y)
            for s, t, y in zip(student_logits, teacher_logits, labels.split(sizes, dim=1))
        )
        if not normalize:
            return total
        return total / (labels != self.ignore_index).sum().clamp(min=1)


class JSDistillWithChunkedOutputLoss(DistillWithChunkedOutputLoss):
    """:class:`~jsd_loss.JSDistillLoss` over chunked logits; a drop-in for torchtune's
    ``ForwardKLWithChunkedOutputLoss`` (same call signature, ``kd_loss`` in a KD config).

    Args:
        num_output_chunks (int): number of chunks the model's output is split into.
            Default: 8.
        beta (float): teacher weight in the JSD mixture. Default: 0.5.
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self,
        num_output_chunks: int = 8,
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
    ):
        super().__init__(JSDivergence(beta), num_output_chunks, temperature, ignore_index)
        self.beta = beta


class KLDistillWithChunkedOutputLoss(DistillWithChunkedOutputLoss):
    """:class:`~jsd_loss.KLDistillLoss` (true KL) over chunked logits.

    Args:
        num_output_chunks (int): number of chunks the model's output is split into.
            Default: 8.
        direction (str): ``"forward"`` or ``"reverse"``. Default: "forward".
        temperature (float): softmax temperature. Default: 1.0.
        ignore_index (int): label value of tokens that do not contribute. Default: -100.
    """

    def __init__(
        self,
        num_output_chunks: int = 8,
        direction: str = "forward",
        temperature: float = 1.0,
        ignore_index: int = -100,
    ):
        super().__init__(KLDivergence(direction), num_output_chunks, temperature, ignore_index)
        self.beta, self.direction = self.divergence.beta, direction
