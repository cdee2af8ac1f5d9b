import shutil
from pathlib import Path

import torch

from jsd_loss.checkpointing import TOKENIZER_FILES
from tests.conftest import tiny_hf_config


def write_tiny_llama(path: Path, tokenizer_from: Path, seed: int = 0, head_dim: int = None,
                     tied: bool = True, **overrides) -> Path:
    """A tiny random HF Llama with the real SmolLM2 tokenizer; ``head_dim`` and an untied
    head as a width-pruned or untied student would have them."""
    from transformers import LlamaForCausalLM

    config = tiny_hf_config(**overrides)
    if head_dim is not None:
        config.head_dim = head_dim
    config.tie_word_embeddings = tied
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_from / name, path / name)
    return path
