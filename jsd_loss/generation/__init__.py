"""Sampling from a model: batched generation with torchtune's KV cache (left-padded prompts,
per-row stop tokens and budgets) and reproducible draws from a caller's generator."""

from jsd_loss.generation._generate import generate, generation_mode
from jsd_loss.generation._sampling import check_sampling, draw_uniform, sample

__all__ = ["check_sampling", "draw_uniform", "generate", "generation_mode", "sample"]
