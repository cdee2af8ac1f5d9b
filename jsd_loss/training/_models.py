"""Student and teacher setup shared by the distillation recipes: build from config, LoRA
adapters, weights, freezing. How weights reach the model (in place on one device, sharded
under FSDP2) is the recipe's ``load`` callable; everything around it is here, once."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torchtune import config, modules, training
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from jsd_loss.training._shapes import check_model_shape

# load(model, state_dict, strict) -> (missing keys, unexpected keys), as nn.Module.load_state_dict
LoadFn = Callable[[nn.Module, Dict[str, Any], bool], Tuple[List[str], List[str]]]


@dataclass(frozen=True)
class LoRA:
    """A LoRA student's adapters: their parameter names, and the rank and alpha that merge
    them into the base weights on save."""

    params: Dict[str, nn.Parameter]
    rank: int
    alpha: float


def load_in_place(model: nn.Module, state_dict: Dict[str, Any], strict: bool) -> Tuple[List[str], List[str]]:
    """The single-device ``load``: ``nn.Module.load_state_dict``."""
    return model.load_state_dict(state_dict, strict=strict)


def checkpoint_weights(cfg_checkpointer: DictConfig) -> Dict[str, Any]:
    """The model weights the checkpointer ``cfg_checkpointer`` reads (torchtune's key names)."""
    return config.instantiate(cfg_checkpointer).load_checkpoint()[training.MODEL_KEY]


def build_model(cfg_model: DictConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Instantiate ``cfg_model`` with parameters of ``dtype`` on ``device`` (``meta``: no memory)."""
    with training.set_default_dtype(dtype), device:
        return config.instantiate(cfg_model)


def checked_meta_model(
    cfg_model: DictConfig, dtype: torch.dtype, hf_config: dict, who: str, checkpoint_dir: Path
) -> nn.Module:
    """The model as ``cfg_model`` builds it, on the meta device (no memory, no weights read),
    refused when its shape differs from its checkpoint's ``config.json`` (see
    :func:`~jsd_loss.training.check_model_shape`)."""
    model = build_model(cfg_model, torch.device("meta"), dtype)
    check_model_shape(model, hf_config, who, checkpoint_dir)
    return model


def init_adapters(model: nn.Module, seed: int, device: torch.device, dtype: torch.dtype) -> None:
    """Draw the LoRA adapters from ``seed`` alone, so they are the same however the frozen
    base was built (on the device, or on meta before sharding) and on every rank; the
    caller's random stream is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), training.set_default_dtype(dtype):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "adapter_params") and hasattr(m, "initialize_parameters"):  # LoRALinear
                if any(p.is_meta for p in m.parameters()):
                    m.to_empty(device=device)
                m.initialize_parameters()


def setup_student(
    cfg_model: DictConfig,
    state_dict: Dict[str, Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    activation_checkpointing: bool,
    on_meta: bool = False,
    load: LoadFn = load_in_place,
    adapters: Optional[Dict[str, torch.Tensor]] = None,
) -> Tuple[nn.Module, Optional[LoRA]]:
    """The student, full-parameter or LoRA (adapters only trainable, drawn from ``seed``),
    with the checkpoint's weights (DoRA magnitudes computed from them, as torchtune's LoRA
    recipes do, so a DoRA student starts as the checkpoint's model); ``on_meta`` builds the frozen base on the meta device
    for a ``load`` that materialises it (FSDP2). ``adapters`` (a resumed run's, every
    adapter tensor) are loaded instead of drawn, DoRA magnitudes included.

    Returns:
        Tuple[nn.Module, Optional[LoRA]]: the model and its adapters (None: full-parameter).

    Raises:
        ValueError: if the checkpoint lacks weights the model needs, or has extra ones, or
            ``adapters`` are not the model's.
    """
    model = build_model(cfg_model, torch.device("meta") if on_meta else device, dtype)
    adapter_params = get_adapter_params(model)
    if adapters is not None:
        if set(adapters) != set(adapter_params):
            raise ValueError(f"the saved adapters are not the student's: {sorted(set(adapters) ^ set(adapter_params))[:3]}")
        state_dict = {**state_dict, **adapters}
    lora = None
    if adapter_params:
        lora = LoRA(adapter_params, rank=cfg_model.lora_rank, alpha=cfg_model.lora_alpha)
        set_trainable_params(model, adapter_params)
        init_adapters(model, seed, device, dtype)
    if activation_checkpointing:
        training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
    missing, unexpected = load(model, state_dict, False)
    # key names as in the state dict: activation checkpointing's wrappers add a prefix
    missing = [k for k in (k.replace(_CHECKPOINT_PREFIX, "") for k in missing) if k not in adapter_params]
    if missing or unexpected:
        raise ValueError(
            f"student checkpoint does not fit the model config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():  # DoRA: magnitudes of the loaded weights, so the student starts as the checkpoint
        for m in model.modules():
            if adapters is None and hasattr(m, "initialize_dora_magnitude"):
                m.initialize_dora_magnitude()
    return model, lora


def setup_teacher(
    cfg_model: DictConfig,
    state_dict: Dict[str, Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    on_meta: bool = False,
    load: LoadFn = load_in_place,
) -> nn.Module:
    """The teacher with every weight of its checkpoint (strict), in eval mode, frozen."""
    model = build_model(cfg_model, torch.device("meta") if on_meta else device, dtype)
    load(model, state_dict, True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def num_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
