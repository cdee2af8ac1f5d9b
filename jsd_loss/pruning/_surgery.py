"""Structured pruning as surgery on HF Llama state dicts (SmolLM2's layout).

Every function takes the kept indices (sorted, in the teacher's order) and returns a new
state dict; none of them scores anything. Rows and columns are sliced, never mixed, so
a pruned model equals its parent with the removed units zeroed (MLP neurons, attention
heads) or skipped (layers). Query/key rows keep HF's rotate-half layout: a head's rows
are one contiguous block in either rotary layout, so head slicing is layout-agnostic.
"""

import re
from typing import Dict, List, Sequence

import torch

Tensor = torch.Tensor
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def count_parameters(config: dict) -> int:
    """Parameters of a tied-embedding Llama described by a HF ``config.json``."""
    d, v, f = int(config["hidden_size"]), int(config["vocab_size"]), int(config["intermediate_size"])
    heads, kv_heads, hd = int(config["num_attention_heads"]), int(config["num_key_value_heads"]), _head_dim(config)
    per_layer = 2 * d * heads * hd + 2 * d * kv_heads * hd + 3 * d * f + 2 * d
    params = v * d + int(config["num_hidden_layers"]) * per_layer + d
    if not config.get("tie_word_embeddings", True):
        params += v * d
    return params


def keep_layers(state: Dict[str, Tensor], layers: Sequence[int]) -> Dict[str, Tensor]:
    """Keep the listed decoder layers, renumbered 0..len(layers)-1 in the given order."""
    position = {old: new for new, old in enumerate(layers)}
    out = {}
    for key, value in state.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(1)) in position:
            out[f"model.layers.{position[int(m.group(1))]}.{m.group(2)}"] = value
    return out


def keep_mlp_neurons(state: Dict[str, Tensor], layer: int, neurons: Tensor) -> Dict[str, Tensor]:
    """Keep the listed SwiGLU neurons of one layer: rows of gate/up, columns of down."""
    p = f"model.layers.{layer}.mlp."
    out = dict(state)
    out[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][neurons]
    out[p + "up_proj.weight"] = state[p + "up_proj.weight"][neurons]
    out[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, neurons]
    return out


def _head_rows(heads: Sequence[int], head_dim: int) -> Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def keep_attention_heads(
    state: Dict[str, Tensor], layer: int, heads: Sequence[int], kv_heads: Sequence[int], head_dim: int
) -> Dict[str, Tensor]:
    """Keep the listed query heads (rows of q, columns of o) and key/value heads.

    The caller keeps grouped-query attention consistent: the kept query heads of each kept
    KV head must be equally many and listed group by group.
    """
    p = f"model.layers.{layer}.self_attn."
    q_rows, kv_rows = _head_rows(heads, head_dim), _head_rows(kv_heads, head_dim)
    out = dict(state)
    out[p + "q_proj.weight"] = state[p + "q_proj.weight"][q_rows]
    out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
    out[p + "k_proj.weight"] = state[p + "k_proj.weight"][kv_rows]
    out[p + "v_proj.weight"] = state[p + "v_proj.weight"][kv_rows]
    return out


_READS_HIDDEN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_WRITES_HIDDEN = ("self_attn.o_proj", "mlp.down_proj")


def keep_hidden_channels(state: Dict[str, Tensor], channels: Tensor) -> Dict[str, Tensor]:
    """Keep the listed residual-stream channels everywhere they appear.

    Embedding columns, every RMSNorm scale, the columns of every projection reading the
    residual stream and the rows of every projection writing it. An RMSNorm then averages
    over ``k`` of ``d`` channels, which shrinks its output by ``sqrt(k / d)`` when the removed
    channels carry no energy; the norm scales are multiplied by ``sqrt(d / k)`` to undo that,
    so removing channels that are zero everywhere is exact and removing small ones is close.
    """
    rescale = (state["model.embed_tokens.weight"].shape[1] / len(channels)) ** 0.5
    out = {}
    for key, value in state.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            out[key] = value[:, channels]
        elif key.endswith("norm.weight"):
            out[key] = value[channels] * rescale
        elif any(key.endswith(name + ".weight") for name in _READS_HIDDEN):
            out[key] = value[:, channels]
        elif any(key.endswith(name + ".weight") for name in _WRITES_HIDDEN):
            out[key] = value[channels]
        else:
            raise ValueError(f"cannot prune hidden channels of unknown weight {key}")
    return out


def pruned_config(config: dict, **shape: int) -> dict:
    """``config`` with the given HF shape keys replaced; ``head_dim`` is always written,
    since a pruned width no longer equals ``num_attention_heads * head_dim``."""
    return {**config, "head_dim": _head_dim(config), **shape}


def kept_heads_per_group(
    num_heads: int, num_kv_heads: int, group_scores: Tensor, heads_per_group: int
) -> List[int]:
    """The ``heads_per_group`` best query heads of every KV group, group by group.

    ``group_scores`` has one score per query head ([num_heads]); query head ``h`` reads
    KV head ``h // (num_heads // num_kv_heads)``, as in torchtune and transformers.
    """
    q_per_kv = num_heads // num_kv_heads
    if not 1 <= heads_per_group <= q_per_kv:
        raise ValueError(f"heads per KV group must be in [1, {q_per_kv}], got {heads_per_group}")
    kept = []
    for g in range(num_kv_heads):
        scores = group_scores[g * q_per_kv : (g + 1) * q_per_kv]
        best = torch.topk(scores, heads_per_group).indices.sort().values
        kept.extend(int(g * q_per_kv + i) for i in best)
    return kept
