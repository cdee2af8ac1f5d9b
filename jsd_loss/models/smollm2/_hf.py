from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torchtune.modules import TransformerDecoder
from torchtune.modules.peft import LORA_ATTN_MODULES

from jsd_loss.checkpointing import check_llama_dims, load_state_dict, read_config
from jsd_loss.models.smollm2._component_builders import lora_smollm2, smollm2
from jsd_loss.models.smollm2._convert_weights import smollm2_hf_to_tune


def hf_config_to_smollm2_args(cfg: dict, where: str = "config.json") -> Dict[str, Any]:
    """The :func:`smollm2` shape arguments a HF ``config.json`` describes.

    Raises:
        ValueError: if the config lacks a dimension, scales RoPE, or unties the embeddings.
    """
    if cfg.get("rope_scaling"):
        raise ValueError(f"{where}: RoPE scaling {cfg['rope_scaling']} is not SmolLM2's plain RoPE")
    if not cfg.get("tie_word_embeddings", True):
        raise ValueError(f"{where}: untied embeddings; SmolLM2 ties them")
    try:
        return dict(
            vocab_size=int(cfg["vocab_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            num_kv_heads=int(cfg["num_key_value_heads"]),
            embed_dim=int(cfg["hidden_size"]),
            intermediate_dim=int(cfg["intermediate_size"]),
            max_seq_len=int(cfg.get("max_position_embeddings", 8192)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_base=float(cfg.get("rope_theta", 100_000)),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])),
        )
    except KeyError as e:
        raise ValueError(f"{where} lacks {e.args[0]!r}") from e


def _args_from_config_path(path: str, max_seq_len: Optional[int]) -> Dict[str, Any]:
    model_dir = Path(path).parent if Path(path).is_file() else Path(path)
    args = hf_config_to_smollm2_args(read_config(model_dir), str(model_dir / "config.json"))
    if max_seq_len is not None:
        args["max_seq_len"] = max_seq_len
    return args


def smollm2_from_hf_config(path: str, max_seq_len: Optional[int] = None) -> TransformerDecoder:
    """
    A randomly initialised SmolLM2 of the shape a HF ``config.json`` describes: the
    builder for students of any pruned shape (weights come from the checkpointer).

    Args:
        path (str): ``config.json`` or the model directory holding it.
        max_seq_len (Optional[int]): override ``max_position_embeddings``.

    Returns:
        TransformerDecoder: the model.
    """
    return smollm2(**_args_from_config_path(path, max_seq_len))


def lora_smollm2_from_hf_config(
    path: str,
    lora_attn_modules: List[LORA_ATTN_MODULES],
    apply_lora_to_mlp: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
    max_seq_len: Optional[int] = None,
) -> TransformerDecoder:
    """
    :func:`smollm2_from_hf_config` with LoRA adapters (arguments as :func:`lora_smollm2`).
    """
    args = _args_from_config_path(path, max_seq_len)
    return lora_smollm2(
        lora_attn_modules=lora_attn_modules, apply_lora_to_mlp=apply_lora_to_mlp, lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_dora=use_dora,
        quantize_base=quantize_base, **args,
    )


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
    hf_state = load_state_dict(Path(model_dir))
    check_llama_dims(cfg, hf_state, str(model_dir))
    return smollm2_from_hf_state(cfg, hf_state, max_seq_len, dtype, where=str(model_dir))


def smollm2_from_hf_state(
    cfg: dict,
    hf_state: Dict[str, torch.Tensor],
    max_seq_len: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    where: str = "state dict",
) -> TransformerDecoder:
    """:func:`smollm2_from_hf` for a HF config and state dict already in memory."""
    args = hf_config_to_smollm2_args(cfg, f"{where}/config.json")
    if max_seq_len is not None:
        args["max_seq_len"] = max_seq_len
    model = smollm2(**args)
    model.load_state_dict(smollm2_hf_to_tune(hf_state, args["num_heads"], args["num_kv_heads"]))
    return model.to(dtype).eval()
