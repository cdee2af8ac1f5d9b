"""Tiny random SmolLM2-architecture teachers for the pruning tests."""

import torch
from transformers import LlamaForCausalLM

from jsd_loss.models.smollm2 import smollm2_from_hf_state
from tests.conftest import tiny_hf_config

SMALL = dict(vocab_size=128, num_layers=3, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=24)


def tiny_teacher(seed: int = 0, **overrides):
    """(HF config dict, HF state dict without lm_head, transformers model)."""
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(tiny_hf_config(**{**SMALL, **overrides})).eval()
    state = {k: v.detach().clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    return hf.config.to_dict(), state, hf


def tune_model(config: dict, state: dict):
    return smollm2_from_hf_state(config, state).double()


def tokens(batch: int = 2, seq: int = 12, vocab: int = 128, seed: int = 0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
