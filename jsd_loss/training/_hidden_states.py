"""What a fused-linear KD loss needs from a torchtune decoder: its final (normed) hidden
states instead of logits, and the weight of its output projection."""

import contextlib
from typing import Iterator

import torch
from torch import nn
from torchtune import modules


@contextlib.contextmanager
def hidden_state_output(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model(...)`` returns final hidden states instead of logits."""
    output, chunks = model.output, model.num_output_chunks
    # an nn.Linear output is a registered child module; TiedLinear is a plain attribute
    model.output = nn.Identity() if isinstance(output, nn.Module) else (lambda h: h)
    model.num_output_chunks = 0
    try:
        yield
    finally:
        model.output, model.num_output_chunks = output, chunks


def output_weight(model: nn.Module) -> torch.Tensor:
    """The output projection's weight, laid out as ``nn.Linear.weight`` (the embeddings when tied)."""
    out = model.output
    return out.tied_module.weight if isinstance(out, modules.TiedLinear) else out.weight
