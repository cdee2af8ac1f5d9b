from jsd_loss.models.smollm2._component_builders import lora_smollm2, smollm2
from jsd_loss.models.smollm2._convert_weights import (
    interleaved_to_rotate_half,
    rotate_half_to_interleaved,
    smollm2_hf_to_tune,
    smollm2_tune_to_hf,
)
from jsd_loss.models.smollm2._hf import (
    hf_config_to_smollm2_args,
    lora_smollm2_from_hf_config,
    smollm2_from_hf,
    smollm2_from_hf_config,
    smollm2_from_hf_state,
)
from jsd_loss.models.smollm2._model_builders import (
    SMOLLM2_90M_INTERMEDIATE_DIM,
    lora_smollm2_135m,
    lora_smollm2_1_7b,
    lora_smollm2_360m,
    lora_smollm2_90m,
    smollm2_135m,
    smollm2_1_7b,
    smollm2_360m,
    smollm2_90m,
    smollm2_tokenizer,
)
from jsd_loss.models.smollm2._tokenizer import SmolLM2Tokenizer

__all__ = [
    "SMOLLM2_90M_INTERMEDIATE_DIM",
    "SmolLM2Tokenizer",
    "hf_config_to_smollm2_args",
    "interleaved_to_rotate_half",
    "lora_smollm2",
    "lora_smollm2_135m",
    "lora_smollm2_1_7b",
    "lora_smollm2_360m",
    "lora_smollm2_90m",
    "lora_smollm2_from_hf_config",
    "rotate_half_to_interleaved",
    "smollm2",
    "smollm2_135m",
    "smollm2_1_7b",
    "smollm2_360m",
    "smollm2_90m",
    "smollm2_hf_to_tune",
    "smollm2_tune_to_hf",
    "smollm2_from_hf",
    "smollm2_from_hf_config",
    "smollm2_from_hf_state",
    "smollm2_tokenizer",
]
