import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import torchtune
from jsd_loss.training import NOT_IMPLEMENTED, SHARDING_ONLY, refuse_unimplemented

STOCK = Path(torchtune.__file__).parents[1] / "recipes" / "configs" / "llama3_2"
KEYS = {**NOT_IMPLEMENTED, **SHARDING_ONLY}


@pytest.mark.parametrize("name", ["8B_to_1B_KD_lora_single_device.yaml", "8B_to_1B_KD_lora_distributed.yaml"])
def test_stock_kd_configs_ask_for_nothing_unimplemented(name):
    refuse_unimplemented(OmegaConf.load(STOCK / name), KEYS)


@pytest.mark.parametrize("key, value, message", [
    ("compile", True, "compile=True is not supported by this recipe: torch.compile"),
    ("profiler.enabled", True, "profiler={'_component_': 'torchtune.training.setup_torch_profiler', 'enabled': True"),
    ("enable_activation_offloading", True, "enable_activation_offloading=True is not supported"),
    ("save_adapter_weights_only", True, "LoRA adapters merged in"),
    ("checkpointer.recipe_checkpoint", "recipe_state.pt", "checkpointer.recipe_checkpoint='recipe_state.pt'"),
    ("fsdp_cpu_offload", True, "needs the distributed recipe"),
    ("custom_sharded_layers", ["tok_embeddings"], "custom_sharded_layers=['tok_embeddings']"),
])
def test_a_value_asking_for_something_unimplemented_is_refused(key, value, message):
    cfg = OmegaConf.load(STOCK / "8B_to_1B_KD_lora_single_device.yaml")
    OmegaConf.update(cfg, key, value, merge=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        refuse_unimplemented(cfg, KEYS)
    refuse_unimplemented(cfg, {k: v for k, v in KEYS.items() if not key.startswith(k)})  # the recipe that has it


def test_values_asking_for_nothing_pass():
    refuse_unimplemented(OmegaConf.create({"compile": False, "profiler": {"enabled": False}, "custom_sharded_layers": [],
                                           "checkpointer": {"recipe_checkpoint": None}, "low_cpu_ram": None}), KEYS)
