"""Drop-ins for torchtune's ``ForwardKLWithChunkedOutputLoss``."""

from typing import List, Union

import torch
from torch import nn

from jsd_loss.losses._distill import JSDistillLoss, KLDistillLoss, _DivergenceLoss
from jsd_loss.losses._topk import TopKDistribution, _check_fields


class _ChunkedOutputLoss(nn.Module):
    """Applies a token-level divergence loss to the chunked logits of a torchtune model.

    torchtune's ``TransformerDecoder.chunked_output`` splits the sequence with
    ``Tensor.chunk``, while other code uses ``tensor_split``; the two disagree when the
    sequence length is not divisible by the number of chunks. The labels are therefore
    split by the sizes of the chunks actually received, and the loss is normalised once
    by the global number of unmasked tokens. A top-k + tail teacher comes as one
    :class:`~jsd_loss.losses.TopKDistribution` over the whole sequence and is split the
    same way.
    """

    def __init__(self, num_output_chunks: int, token_loss: _DivergenceLoss):
        super().__init__()
        if num_output_chunks < 1:
            raise ValueError(f"num_output_chunks must be >= 1, got {num_output_chunks}")
        self.num_output_chunks = num_output_chunks
        self.token_loss = token_loss
        self.ignore_index = token_loss.ignore_index

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


class JSDistillWithChunkedOutputLoss(_ChunkedOutputLoss):
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
        super().__init__(
            num_output_chunks, JSDistillLoss(beta, temperature, ignore_index)
        )


class KLDistillWithChunkedOutputLoss(_ChunkedOutputLoss):
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
        super().__init__(
            num_output_chunks, KLDistillLoss(direction, temperature, ignore_index)
        )
