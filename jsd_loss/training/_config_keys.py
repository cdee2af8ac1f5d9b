"""Config keys of torchtune's stock recipes that a recipe here does not implement: a value
that asks for nothing (absent, null, False, empty, a disabled section) passes, anything else
is refused with the reason, never silently ignored."""

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

# key (dotted for nested ones) -> why a value asking for it is refused
NOT_IMPLEMENTED = {
    "compile": "torch.compile is not wired into this recipe; set compile=False",
    "profiler": "the torch profiler is not wired into this recipe; remove the section or set profiler.enabled=False",
    "enable_activation_offloading": "activation offloading is not implemented here; enable_activation_checkpointing is",
    "save_adapter_weights_only": "checkpoints are HF model directories with the LoRA adapters merged in",
    "low_cpu_ram": "checkpoints are loaded whole; low_cpu_ram loading is not implemented",
    "optimizer_in_bwd": "the optimizer steps after gradient accumulation and clipping, not in backward",
    "checkpointer.adapter_checkpoint": "resume with resume_from_checkpoint=True (from output_dir/step_N)",
    "checkpointer.recipe_checkpoint": "resume with resume_from_checkpoint=True (from output_dir/step_N)",
    "checkpointer.should_load_recipe_state": "resume with resume_from_checkpoint=True (from output_dir/step_N)",
    "checkpointer.resume_from_checkpoint": "resume with resume_from_checkpoint=True at the top level",
}
# meaningful only when the model is sharded (the distributed recipe implements them)
SHARDING_ONLY = {
    "fsdp_cpu_offload": "CPU offload of sharded parameters needs the distributed recipe",
    "custom_sharded_layers": "sharding needs the distributed recipe",
}


def _asks_nothing(value: Any) -> bool:
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return not value.get("enabled", False)
    return value is None or value is False or value == [] or value == ""


def refuse_unimplemented(cfg: DictConfig, keys: Mapping[str, str]) -> None:
    """
    Raise for the first of ``keys`` whose value in ``cfg`` asks for something.

    Args:
        cfg (DictConfig): the recipe's config.
        keys (Mapping[str, str]): key (dotted for nested) -> reason it is not implemented.

    Raises:
        ValueError: naming the key, its value and the reason.
    """
    for key, why in keys.items():
        value = OmegaConf.select(cfg, key, default=None)
        if not _asks_nothing(value):
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
            raise ValueError(f"{key}={shown!r} is not supported by this recipe: {why}")
