"""
Component builders for SmolLM2 and its LoRA variant.

SmolLM2 is a Llama-architecture decoder (grouped-query attention, SwiGLU MLP, RMSNorm,
tied input/output embeddings) with *plain* rotary embeddings: unlike Llama 3.x there
is no RoPE frequency scaling, so torchtune's ``llama3_2`` builders (which hard-wire
``Llama3ScaledRoPE``) do not apply. Rotary embeddings use torchtune's interleaved
layout; checkpoints in HF's rotate-half layout are permuted by the converters in
``_convert_weights.py``.
"""

from typing import List, Optional

import torch
from torch import nn
from torchtune.models.llama3._component_builders import llama3_mlp, lora_llama3_mlp
from torchtune.models.llama3_2._component_builders import lora_llama3_2_self_attention
from torchtune.modules import (
    MultiHeadAttention,
    RMSNorm,
    RotaryPositionalEmbeddings,
    TiedLinear,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)
from torchtune.modules.low_precision import FrozenNF4Linear
from torchtune.modules.peft import LORA_ATTN_MODULES, DoRALinear, LoRALinear


class ContiguousTiedLinear(TiedLinear):
    """torchtune's :class:`~torchtune.modules.TiedLinear`, applied to a contiguous copy of a
    non-contiguous input. The decoder's chunked output hands it slices of the sequence dim,
    which are not contiguous for batches of several rows, and for those ``F.linear`` on CPU
    falls back to a batched matmul over one copy of the (vocab, dim) weight per row: at 2 x 256
    tokens, vocab 49152 and dim 576, 25x slower in bf16 and 1.4x in fp32. Copying the slice
    costs (tokens, dim) instead."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return super().__call__(x.contiguous())


def _decoder(
    layers: nn.ModuleList,
    vocab_size: int,
    embed_dim: int,
    num_heads: int,
    head_dim: int,
    max_seq_len: int,
    norm_eps: float,
) -> TransformerDecoder:
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    return TransformerDecoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=ContiguousTiedLinear(tok_embeddings),
    )


def smollm2(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 100_000,
    head_dim: Optional[int] = None,
) -> TransformerDecoder:
    """
    Build a SmolLM2 decoder: token embeddings, ``num_layers`` self-attention blocks,
    a final RMSNorm and an output projection tied to the token embeddings.

    Args:
        vocab_size (int): number of tokens in the vocabulary.
        num_layers (int): number of transformer layers.
        num_heads (int): number of query heads.
        num_kv_heads (int): number of key/value heads (grouped-query attention).
        embed_dim (int): model width.
        intermediate_dim (int): SwiGLU hidden width.
        max_seq_len (int): longest sequence the model (and its KV cache) supports.
        attn_dropout (float): attention dropout. Default: 0.0
        norm_eps (float): RMSNorm epsilon. Default: 1e-5
        rope_base (float): rotary base (``rope_theta``). Default: 100_000
        head_dim (Optional[int]): width of each attention head; ``None`` means
            ``embed_dim // num_heads``. A student pruned in its hidden channels or heads
            keeps the teacher's head width, so it differs there. Default: None

    Returns:
        TransformerDecoder: the SmolLM2 model.
    """
    head_dim = head_dim or embed_dim // num_heads
    rope = RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)
    layers = nn.ModuleList()
    for _ in range(num_layers):
        self_attn = MultiHeadAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            q_proj=nn.Linear(embed_dim, num_heads * head_dim, bias=False),
            k_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
            v_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
            output_proj=nn.Linear(num_heads * head_dim, embed_dim, bias=False),
            pos_embeddings=rope,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=self_attn,
                mlp=llama3_mlp(dim=embed_dim, hidden_dim=intermediate_dim),
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    return _decoder(layers, vocab_size, embed_dim, num_heads, head_dim, max_seq_len, norm_eps)


def _projection(in_dim: int, out_dim: int, with_lora: bool, lora_args: dict) -> nn.Module:
    """A bias-free projection, a LoRA/DoRA one when ``with_lora``, NF4 when quantized."""
    if with_lora:
        adapter_cls = DoRALinear if lora_args["use_dora"] else LoRALinear
        return adapter_cls(
            in_dim, out_dim, rank=lora_args["lora_rank"], alpha=lora_args["lora_alpha"],
            dropout=lora_args["lora_dropout"], quantize_base=lora_args["quantize_base"],
        )
    if lora_args["quantize_base"]:
        return FrozenNF4Linear(in_dim, out_dim, bias=False)
    return nn.Linear(in_dim, out_dim, bias=False)


def lora_smollm2(
    lora_attn_modules: List[LORA_ATTN_MODULES],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 100_000,
    head_dim: Optional[int] = None,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """
    Build a SmolLM2 decoder with LoRA adapters (same arguments as torchtune's
    ``lora_llama3_2``, so the stock LoRA recipes accept it).

    Args:
        lora_attn_modules (List[LORA_ATTN_MODULES]): attention projections that get LoRA,
            a subset of ``{"q_proj", "k_proj", "v_proj", "output_proj"}``.
        apply_lora_to_mlp (bool): also adapt the MLP projections. Default: False
        apply_lora_to_output (bool): not supported: the output projection is tied to
            the embeddings. Default: False
        vocab_size (int): see :func:`smollm2`.
        num_layers (int): see :func:`smollm2`.
        num_heads (int): see :func:`smollm2`.
        num_kv_heads (int): see :func:`smollm2`.
        embed_dim (int): see :func:`smollm2`.
        intermediate_dim (int): see :func:`smollm2`.
        max_seq_len (int): see :func:`smollm2`.
        attn_dropout (float): see :func:`smollm2`.
        norm_eps (float): see :func:`smollm2`.
        rope_base (float): see :func:`smollm2`.
        head_dim (Optional[int]): see :func:`smollm2`.
        lora_rank (int): rank of each low-rank update.
        lora_alpha (float): LoRA scaling numerator.
        lora_dropout (float): LoRA dropout. Default: 0.0
        use_dora (bool): use DoRA instead of LoRA. Default: False
        quantize_base (bool): NF4-quantize the frozen base weights (QLoRA). Default: False

    Returns:
        TransformerDecoder: the SmolLM2 model with LoRA adapters.

    Raises:
        ValueError: if ``apply_lora_to_output`` is set.
    """
    if apply_lora_to_output:
        raise ValueError(
            "apply_lora_to_output is not supported for SmolLM2: its output projection is "
            "tied to the token embeddings"
        )
    head_dim = head_dim or embed_dim // num_heads
    rope = RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)
    lora_args = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                     use_dora=use_dora, quantize_base=quantize_base)
    layers = nn.ModuleList()
    for _ in range(num_layers):
        self_attn = lora_llama3_2_self_attention(
            lora_modules=lora_attn_modules,
            pos_embeddings=rope,
            head_dim=head_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
            **lora_args,
        )
        if num_heads * head_dim != embed_dim:
            # torchtune's builder assumes num_heads * head_dim == embed_dim for output_proj
            self_attn.output_proj = _projection(
                num_heads * head_dim, embed_dim, "output_proj" in lora_attn_modules, lora_args
            )
        if apply_lora_to_mlp:
            mlp = lora_llama3_mlp(dim=embed_dim, hidden_dim=intermediate_dim, **lora_args)
        else:
            mlp = llama3_mlp(dim=embed_dim, hidden_dim=intermediate_dim, quantize_base=quantize_base)
        layers.append(
            TransformerSelfAttentionLayer(
                attn=self_attn,
                mlp=mlp,
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    model = _decoder(layers, vocab_size, embed_dim, num_heads, head_dim, max_seq_len, norm_eps)
    if quantize_base:
        from functools import partial

        from torchtune.modules.common_utils import reparametrize_as_dtype_state_dict_post_hook

        model._register_state_dict_hook(
            partial(reparametrize_as_dtype_state_dict_post_hook, offload_to_cpu=True)
        )
    return model
