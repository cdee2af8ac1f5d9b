"""Which converter writes a trained student back as HF weights: chosen by the model family
(the checkpointer's ``model_type``, as torchtune's checkpointer chose the converter that
read it), or named explicitly in the config; refused before training when it cannot
convert the student."""

import importlib
from functools import partial
from typing import Callable, Dict, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune.modules import TiedLinear

from jsd_loss.models.smollm2 import smollm2_tune_to_hf

StateDict = Dict[str, torch.Tensor]
# a converter: (torchtune state dict, num_heads, num_kv_heads) -> HF state dict
Converter = Callable[[StateDict, int, int], StateDict]

# torchtune's FullModelHFCheckpointer reads these model types with the plain Llama mapping:
# q/k rows permuted from HF's rotate-half layout to torchtune's interleaved one. The SmolLM2
# converter is its inverse for tied embeddings (it writes no lm_head.weight).
LLAMA_LAYOUT = ("LLAMA2", "LLAMA3", "LLAMA3_2", "MISTRAL")


def _import(path: str) -> Converter:
    module, _, name = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as e:
        raise ValueError(f"hf_converter={path!r} cannot be imported: {e}") from e
    if not callable(fn):
        raise ValueError(f"hf_converter={path!r} is not a function (state_dict, num_heads, num_kv_heads)")
    return fn


def hf_converter(
    cfg_checkpointer: DictConfig, hf_config: dict, model: nn.Module, converter: Optional[str] = None
) -> Callable[[StateDict], StateDict]:
    """
    The student's torchtune-to-HF weight conversion, bound to its head counts.

    Args:
        cfg_checkpointer (DictConfig): the student's checkpointer config (its ``model_type``).
        hf_config (dict): the student's ``config.json``.
        model (nn.Module): the student as the config builds it (the meta device will do).
        converter (Optional[str]): dotted path of a converter ``(state_dict, num_heads,
            num_kv_heads) -> HF state dict`` (the config's ``hf_converter``); it replaces the
            choice by ``model_type`` and is trusted with the model as it is. Default: None

    Returns:
        Callable[[StateDict], StateDict]: torchtune state dict -> HF state dict.

    Raises:
        ValueError: if no converter is known for the ``model_type`` (families whose torchtune
            layout differs from the Llama one, e.g. QWEN2's rotate-half q/k, would be
            scrambled by the Llama permutation), or if the student's output projection is
            not tied to its embeddings (the Llama-layout converter writes no lm_head).
    """
    heads = dict(num_heads=hf_config["num_attention_heads"], num_kv_heads=hf_config["num_key_value_heads"])
    if converter is not None:
        return partial(_import(converter), **heads)
    model_type = cfg_checkpointer.get("model_type")
    if model_type not in LLAMA_LAYOUT:
        raise ValueError(
            f"cannot save a checkpointer.model_type={model_type} student: this recipe writes HF weights for "
            f"the Llama layout ({', '.join(LLAMA_LAYOUT)}: q/k rows permuted back from torchtune's interleaved "
            "RoPE to HF's rotate-half), which would scramble other families; set hf_converter to a converter "
            "(state_dict, num_heads, num_kv_heads) -> HF state dict for this family"
        )
    if hf_config.get("tie_word_embeddings") is False or not isinstance(model.output, TiedLinear):
        raise ValueError(
            "cannot save an untied student (config.json tie_word_embeddings="
            f"{hf_config.get('tie_word_embeddings')}, model output {type(model.output).__name__}): the "
            f"{model_type} converter writes tied embeddings and no lm_head.weight; set hf_converter to one "
            "that writes the output projection"
        )
    return partial(smollm2_tune_to_hf, **heads)
