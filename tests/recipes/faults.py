"""Fault injection for the recipe tests: config components that fail on one rank only."""

import os

from jsd_loss.models.smollm2 import smollm2_tokenizer


def tokenizer_failing_on_rank(rank: int, **kwargs):
    """``smollm2_tokenizer`` everywhere but on ``rank``, which raises (as a rank that runs out
    of memory or reads a corrupt file at start would)."""
    if int(os.environ.get("RANK", "0")) == rank:
        raise RuntimeError(f"injected failure on rank {rank}")
    return smollm2_tokenizer(**kwargs)
