"""State-dict converters between HF ``LlamaForCausalLM`` (SmolLM2) and torchtune.

HF checkpoints keep q/k projections in the rotate-half rotary layout; torchtune (and
GGUF) use the interleaved layout, so q and k rows are permuted per head. SmolLM2 ties
its output projection to the token embeddings: no ``lm_head.weight`` is read or written.
"""

from typing import Dict

import torch
from torchtune.models.convert_weights import get_mapped_key

_FROM_HF = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attn.output_proj.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.sa_norm.scale",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.scale",
    "model.norm.weight": "norm.scale",
}
_TO_HF = {v: k for k, v in _FROM_HF.items()}


def rotate_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute q/k projection rows from HF's rotate-half layout to interleaved pairs."""
    head_dim = w.shape[0] // n_heads
    return w.view(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def interleaved_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`rotate_half_to_interleaved`."""
    head_dim = w.shape[0] // n_heads
    return w.view(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _map(key, value, mapping, permute, num_heads, num_kv_heads):
    """The renamed key and the value, q/k rows permuted by ``permute``."""
    if "q_proj" in key:
        value = permute(value, num_heads)
    elif "k_proj" in key:
        value = permute(value, num_kv_heads)
    return get_mapped_key(key, mapping), value


def smollm2_hf_to_tune(
    state_dict: Dict[str, torch.Tensor], num_heads: int = 9, num_kv_heads: int = 3
) -> Dict[str, torch.Tensor]:
    """
    Convert a HF SmolLM2 state dict to torchtune's format.

    Args:
        state_dict (Dict[str, torch.Tensor]): HF state dict.
        num_heads (int): query heads. Default: 9 (135M)
        num_kv_heads (int): key/value heads. Default: 3 (135M)

    Returns:
        Dict[str, torch.Tensor]: torchtune state dict. A ``lm_head.weight`` is dropped:
        it must equal the tied embeddings.

    Raises:
        ValueError: if ``lm_head.weight`` differs from the embeddings (an untied model).
    """
    out = {}
    for key, value in state_dict.items():
        if "rotary_emb.inv_freq" in key:
            continue
        if key == "lm_head.weight":
            emb = state_dict.get("model.embed_tokens.weight")
            if emb is not None and not torch.equal(value, emb):
                raise ValueError("lm_head.weight differs from the embeddings: not a tied SmolLM2")
            continue
        new_key, value = _map(key, value, _FROM_HF, rotate_half_to_interleaved, num_heads, num_kv_heads)
        out[new_key] = value
    return out


def smollm2_tune_to_hf(
    state_dict: Dict[str, torch.Tensor], num_heads: int = 9, num_kv_heads: int = 3
) -> Dict[str, torch.Tensor]:
    """
    Convert a torchtune SmolLM2 state dict to HF ``LlamaForCausalLM`` format (tied
    embeddings: no ``lm_head.weight``).

    Args:
        state_dict (Dict[str, torch.Tensor]): torchtune state dict.
        num_heads (int): query heads. Default: 9 (135M)
        num_kv_heads (int): key/value heads. Default: 3 (135M)

    Returns:
        Dict[str, torch.Tensor]: HF state dict.
    """
    out = {}
    for key, value in state_dict.items():
        if key == "output.weight":  # a tied output, materialised by some checkpointers
            continue
        new_key, value = _map(key, value, _TO_HF, interleaved_to_rotate_half, num_heads, num_kv_heads)
        out[new_key] = value
    return out
