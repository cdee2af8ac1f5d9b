"""Teacher-forced negative log-likelihood of reference responses."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

IGNORE_INDEX = -100


class _Stop(Exception):
    pass


def final_hidden_states(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[b, s, d] output of a torchtune ``TransformerDecoder``'s final norm, without
    running its output projection (the vocabulary-wide matmul that dominates long prompts)."""
    seen = {}

    def hook(module, args, output):
        seen["h"] = output
        raise _Stop

    handle = model.norm.register_forward_hook(hook)
    try:
        model(tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["h"]


@torch.no_grad()
def response_nll(
    model: nn.Module, samples: Sequence[Tuple[List[int], List[int]]], batch_size: int = 4
) -> Tuple[float, int]:
    """Summed NLL (nats) of the labelled tokens and their count.

    Each sample is ``(tokens, labels)`` as an SFT dataset yields them: ``labels[i]`` is
    ``tokens[i]`` where the position is scored and ``-100`` where it is not (the prompt).
    Position ``i``'s logits predict ``labels[i + 1]``. Samples are right-padded into
    length-sorted batches; padding is never scored and, with causal attention, never
    seen by a scored position.

    Only the scored positions go through the output projection.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``.
        samples (Sequence[Tuple[List[int], List[int]]]): token and label lists.
        batch_size (int): sequences per forward. Default: 4

    Returns:
        Tuple[float, int]: total NLL and number of scored tokens; their ratio is the mean
        NLL per response token.
    """
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(t) for t, _ in chunk)
        tokens = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (t, l) in enumerate(chunk):
            tokens[row, : len(t)] = torch.tensor(t)
            labels[row, : len(l)] = torch.tensor(l)
        target = labels[:, 1:]
        scored = target != IGNORE_INDEX
        hidden = final_hidden_states(model, tokens)[:, :-1][scored]
        logits = model.output(hidden).float()
        total += float(nn.functional.cross_entropy(logits, target[scored], reduction="sum"))
        count += int(scored.sum())
    return total, count
