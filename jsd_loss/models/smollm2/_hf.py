from pathlib import Path
from typing import Optional

import torch
from torchtune.modules import TransformerDecoder

from jsd_loss.checkpointing import check_llama_dims, load_state_dict, read_config
from jsd_loss.models.smollm2._component_builders import smollm2
from jsd_loss.models.smollm2._convert_weights import smollm2_hf_to_tune


def smollm2_from_hf(
    model_dir: str, max_seq_len: Optional[int] = None, dtype: torch.dtype = torch.float32
) -> TransformerDecoder:
    """
    Build a SmolLM2 (any size, incl. pruned students) from a standard HF directory:
    dimensions from its ``config.json``, weights from its safetensors.

    Args:
        model_dir (str): HF model directory.
        max_seq_len (Optional[int]): override ``max_position_embeddings``.
        dtype (torch.dtype): parameter dtype. Default: torch.float32

    Returns:
        TransformerDecoder: the model in eval mode.
    """
    cfg = read_config(Path(model_dir))
    if cfg.get("rope_scaling"):
        raise ValueError(f"{model_dir}: RoPE scaling {cfg['rope_scaling']} is not SmolLM2's plain RoPE")
    if not cfg.get("tie_word_embeddings", True):
        raise ValueError(f"{model_dir}: untied embeddings; SmolLM2 ties them")
    hf_state = load_state_dict(Path(model_dir))
    check_llama_dims(cfg, hf_state, str(model_dir))
    model = smollm2(
        vocab_size=cfg["vocab_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg["num_key_value_heads"],
        embed_dim=cfg["hidden_size"],
        intermediate_dim=cfg["intermediate_size"],
        max_seq_len=max_seq_len or cfg.get("max_position_embeddings", 8192),
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_base=cfg.get("rope_theta", 100_000),
    )
    state = smollm2_hf_to_tune(hf_state, cfg["num_attention_heads"], cfg["num_key_value_heads"])
    model.load_state_dict(state)
    return model.to(dtype).eval()
