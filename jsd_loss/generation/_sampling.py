"""Drawing the next token from a model's logits: temperature, top-k, and one uniform number
per row from a caller's generator, so that a seeded generator makes the draws reproducible
(and resumable, from its saved state) on any device."""

from typing import Optional

import torch


def check_sampling(temperature: float, top_k: Optional[int]) -> None:
    """
    Raises:
        ValueError: for a negative temperature or a top_k below 1.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be null or an integer >= 1, got {top_k!r}")


def draw_uniform(generator: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    """``n`` numbers in [0, 1) from ``generator`` (a CPU generator: the same draws whatever
    the device), on ``device``."""
    return torch.rand(n, generator=generator, dtype=torch.float64).to(device)


def sample(
    logits: torch.Tensor, uniform: torch.Tensor, *, temperature: float = 1.0, top_k: Optional[int] = None
) -> torch.Tensor:
    """
    One token per row of ``logits`` (B, V) from ``softmax(logits / temperature)``, restricted
    to the ``top_k`` most probable tokens when given, by inverting the cumulative distribution
    at ``uniform`` (B,) in [0, 1): row ``i`` takes the first token whose cumulative probability
    exceeds ``uniform[i]`` (a token of probability 0 is never drawn). ``temperature`` 0 or
    ``top_k`` 1 is greedy (argmax; ``uniform`` unused).

    Returns:
        torch.Tensor: token ids (B,) int64.
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    scaled = logits.double() / temperature
    ids = None
    if top_k is not None and top_k < scaled.size(-1):
        scaled, ids = scaled.topk(top_k, dim=-1)
    cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
    target = (uniform.double() * cdf[:, -1]).unsqueeze(-1)
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.size(-1) - 1)
    if ids is not None:
        choice = ids.gather(-1, choice)
    return choice.squeeze(-1)
