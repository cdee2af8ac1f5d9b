"""A HF Llama directory's shape as GGUF's ``llama.*`` metadata, and its tensors in GGUF's
names and rotary layout. Everything GGUF (or transformers' GGUF loader) could not hold is
refused here, before any file is opened."""

from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import torch

from jsd_loss.checkpointing import check_llama_dims
from jsd_loss.models.smollm2 import rotate_half_to_interleaved

# the import's table (GGUF name -> HF name), inverted, so the two directions cannot drift apart
from jsd_loss.prepare._gguf import _TENSOR_NAMES as _GGUF_TO_HF

_HF_TO_GGUF = {hf: gguf_name for gguf_name, hf in _GGUF_TO_HF.items()}
_LAYER_SUFFIXES = [hf for gguf_name, hf in _GGUF_TO_HF.items() if not hf.startswith("model.")]
_LLAMA_DEFAULT_ROPE_THETA = 10_000.0  # what transformers' LlamaConfig assumes when config.json is silent


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions a GGUF's ``llama.*`` metadata states, all read from ``config.json``.

    ``head_dim`` may differ from ``hidden_size // num_heads`` (width-pruned students);
    ``tied_embeddings`` False means a separate ``output.weight`` is written.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tied_embeddings: bool

    @property
    def head_dim_is_derived(self) -> bool:
        """True when llama.cpp's default ``hidden_size // num_heads`` is the head size."""
        return self.hidden_size % self.num_heads == 0 and self.head_dim == self.hidden_size // self.num_heads


def _refuse_foreign_architecture(config: dict) -> None:
    archs = config.get("architectures") or ["LlamaForCausalLM"]  # older configs may omit it
    if config.get("model_type") != "llama" or archs != ["LlamaForCausalLM"]:
        raise ValueError(
            f"config.json describes model_type {config.get('model_type')!r}, architectures {archs}; "
            "only Llama-architecture models (LlamaForCausalLM, model_type 'llama') can be exported"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} cannot be exported: GGUF's llama uses SiLU")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ValueError(f"config.json sets {flag}: true; biases are not exported (SmolLM2 has none)")


def _rope_theta(config: dict) -> float:
    """RoPE base, refusing any RoPE variant that the GGUF would not state.

    transformers 5 nests RoPE settings in ``rope_parameters``; 4.x wrote ``rope_theta`` and
    ``rope_scaling`` at the top level. Both are read.
    """
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default" or set(scaling) - {"rope_type", "type", "rope_theta"}:
        raise ValueError(
            f"config.json declares RoPE scaling ({scaling or params}); the export writes plain RoPE "
            "only (no llama.rope.scaling.* keys), so it would change the model"
        )
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        # transformers' GGUF loader reads llama.rope.dimension_count as head_dim: a rotary
        # part narrower than the head cannot be stated so that it reads it back
        raise ValueError(f"partial_rotary_factor {partial} cannot be exported: GGUF llama rotates whole heads")
    return float(params.get("rope_theta", config.get("rope_theta", _LLAMA_DEFAULT_ROPE_THETA)))


def llama_shape(config: dict) -> LlamaShape:
    """Read and check the shape of a Llama ``config.json``.

    Args:
        config (dict): the parsed ``config.json``.

    Returns:
        LlamaShape: every dimension the GGUF metadata will state.

    Raises:
        ValueError: for a non-Llama architecture, biases, RoPE scaling or partial rotary,
            heads not divisible into KV groups, an odd ``head_dim``, or a missing key.
    """
    _refuse_foreign_architecture(config)
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        shape = LlamaShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            context_length=int(config["max_position_embeddings"]),
            rope_theta=_rope_theta(config),
            rms_norm_eps=float(config["rms_norm_eps"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise ValueError(f"config.json lacks {e.args[0]!r}") from e
    if shape.num_heads % shape.num_kv_heads:
        raise ValueError(
            f"num_attention_heads {shape.num_heads} is not a multiple of num_key_value_heads "
            f"{shape.num_kv_heads}: not a grouped-query shape GGUF can state"
        )
    if shape.head_dim % 2:
        raise ValueError(f"head_dim {shape.head_dim} is odd: RoPE rotates pairs, so it must be even")
    return shape


def check_weights(config: dict, state_dict: Dict[str, torch.Tensor], shape: LlamaShape, where: str) -> None:
    """Raise when the weights disagree with ``config.json`` or an untied head is missing."""
    check_llama_dims(config, state_dict, where)
    if shape.tied_embeddings:
        return
    head = state_dict.get("lm_head.weight")
    if head is None:
        raise ValueError(f"{where}: tie_word_embeddings is false but there is no lm_head.weight")
    if tuple(head.shape) != (shape.vocab_size, shape.hidden_size):
        raise ValueError(
            f"{where}: lm_head.weight has shape {tuple(head.shape)}, expected "
            f"{(shape.vocab_size, shape.hidden_size)}"
        )


def gguf_tensors(state_dict: Dict[str, torch.Tensor], shape: LlamaShape) -> Iterator[Tuple[str, torch.Tensor]]:
    """The HF tensors under GGUF's names, float32, q/k rows in GGUF's interleaved rotary layout.

    Args:
        state_dict (Dict[str, torch.Tensor]): HF weights, already checked by :func:`check_weights`.
        shape (LlamaShape): the model's shape.

    Yields:
        Tuple[str, torch.Tensor]: ``(gguf_name, tensor)`` with the HF shape ``(out, in)``;
        GGUF lists the same dimensions fastest-first.
    """
    yield "token_embd.weight", state_dict["model.embed_tokens.weight"].float()
    for i in range(shape.num_layers):
        for suffix in _LAYER_SUFFIXES:
            w = state_dict[f"model.layers.{i}.{suffix}"].float()
            if suffix == "self_attn.q_proj.weight":
                w = rotate_half_to_interleaved(w, shape.num_heads)
            elif suffix == "self_attn.k_proj.weight":
                w = rotate_half_to_interleaved(w, shape.num_kv_heads)
            yield f"blk.{i}.{_HF_TO_GGUF[suffix]}", w
    yield "output_norm.weight", state_dict["model.norm.weight"].float()
    if not shape.tied_embeddings:
        yield "output.weight", state_dict["lm_head.weight"].float()
