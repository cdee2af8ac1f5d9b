# Distributed counterpart of jsd_loss/recipes/jsd_distill_single_device.py on torch.distributed FSDP2,
# after torchtune 0.6.1 recipes/knowledge_distillation_distributed.py (Copyright (c) Meta
# Platforms, Inc. and affiliates; BSD-style license).
#
#   tune run --nproc_per_node 2 jsd_loss/recipes/jsd_distill_distributed.py --config ...
#
# It reuses the single-device recipe class and replaces only what distribution changes,
# so the two cannot drift apart:
#   - process group: NCCL on CUDA, gloo on CPU (initialised in recipe_main);
#   - student and teacher sharded with FSDP2 (training.shard_model), weights loaded from the
#     full state dict with training.load_from_full_model_state_dict;
#   - each rank reads its own shard of every batch (distributed sampler); the step's token
#     count and losses are all-reduced, and gradients rescaled by world_size / tokens to undo
#     FSDP2's gradient averaging, so a step equals the single-device step at the same global batch;
#   - checkpoints: full model and optimizer state consolidated on rank 0, which alone writes
#     (atomically); every rank waits at a barrier;
#   - fused-linear KD losses read the output weight after the forward, so the root module
#     (embeddings, final norm, output) is not resharded after forward: the loss sees the
#     unsharded weight and FSDP2 reduce-scatters its gradient with the others;
#   - LoRA adapters are drawn from the run's seed on every rank before sharding (the frozen
#     base is built on meta and loaded from the checkpoint).

import sys
from functools import partial
from typing import Any, Dict

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed import destroy_process_group, init_process_group
from torch.distributed.tensor import DTensor
from torchtune import config, modules, training, utils
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice

log = utils.get_logger("INFO")


class KDRecipeDistributed(KDRecipeSingleDevice):
    """Knowledge distillation with FSDP2 across ``torchrun`` processes (any number of nodes).

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self._is_rank_zero = self.rank == 0
        self._grad_scale_numerator = float(self.world_size)
        self._reshard_after_forward = cfg.get("fsdp_reshard_after_forward", True)
        self._cpu_offload = cfg.get("fsdp_cpu_offload", False)

    def _shard_and_load(self, model: nn.Module, state_dict: Dict[str, Any], strict: bool):
        training.shard_model(
            model=model,
            shard_conditions=[partial(training.get_shard_conditions, names_to_match=None)],
            cpu_offload=self._cpu_offload,
            reshard_after_forward=self._reshard_after_forward,
        )
        if self._fused_kd:
            # the fused loss multiplies by the output weight after the forward; FSDP2's own
            # default for a root, which torchtune's explicit reshard_after_forward overrides
            model.set_reshard_after_forward(False, recurse=False)
        with training.set_default_dtype(self._dtype), self._device:
            for m in model.modules():
                if hasattr(m, "rope_init"):  # RoPE buffers are not in the state dict
                    m.rope_init()
        return training.load_from_full_model_state_dict(
            model, state_dict, self._device, strict=strict, cpu_offload=self._cpu_offload
        )

    def _setup_model(
        self, cfg_model: DictConfig, enable_activation_checkpointing: bool, model_state_dict: Dict[str, Any]
    ) -> nn.Module:
        with training.set_default_dtype(self._dtype), torch.device("meta"):
            model = config.instantiate(cfg_model)
        self.adapter_params = get_adapter_params(model)
        self._is_lora = bool(self.adapter_params)
        if self._is_lora:
            self._lora_rank, self._lora_alpha = cfg_model.lora_rank, cfg_model.lora_alpha
            set_trainable_params(model, self.adapter_params)
        if enable_activation_checkpointing:
            training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
        if self._is_lora:
            self._init_adapters(model)
        missing, unexpected = self._shard_and_load(model, model_state_dict, strict=False)
        missing = [k for k in missing if k not in self.adapter_params]
        if missing or unexpected:
            raise ValueError(
                f"student checkpoint does not fit the model config: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        training.validate_no_params_on_meta_device(model)
        utils.log_rank_zero(log, f"Student model sharded over {self.world_size} ranks.")
        self._barrier()
        return model

    def _setup_teacher_model(self, model_cfg: DictConfig, model_state_dict: Dict[str, Any]) -> nn.Module:
        with training.set_default_dtype(self._dtype), torch.device("meta"):
            model = config.instantiate(model_cfg)
        self._shard_and_load(model, model_state_dict, strict=True)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        training.validate_no_params_on_meta_device(model)
        self._barrier()
        return model

    @staticmethod
    def _output_weight(model: nn.Module) -> torch.Tensor:
        weight = KDRecipeSingleDevice._output_weight(model)
        if isinstance(weight, DTensor):
            raise RuntimeError(
                "the output weight is still sharded after the forward; the fused-linear KD loss "
                "needs the root module unsharded (set_reshard_after_forward(False) on the root)"
            )
        return weight

    def _reduce_step_stats(self, num_tokens, class_loss_sum, kd_loss_sum):
        stats = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=self._device).detach()
                             for x in (num_tokens, class_loss_sum, kd_loss_sum)])
        torch.distributed.all_reduce(stats)
        return stats[0], stats[1], stats[2]

    def _hf_state_dict(self) -> Dict[str, torch.Tensor]:
        from torchtune.modules.peft import get_merged_lora_ckpt

        from jsd_loss.models.smollm2 import smollm2_tune_to_hf

        state_dict = training.gather_cpu_state_dict(self._model, self._is_rank_zero, device=self._device)
        if not self._is_rank_zero:
            return {}
        if self._is_lora:
            state_dict = get_merged_lora_ckpt(state_dict, rank=self._lora_rank, alpha=self._lora_alpha)
        cfg = self._student_hf_config
        return smollm2_tune_to_hf(state_dict, cfg["num_attention_heads"], cfg["num_key_value_heads"])

    def _optimizer_state_dict(self) -> Dict[str, Any]:
        return training.get_full_optimizer_state_dict(
            self._model, self._optimizer, self._is_rank_zero, device=self._device
        )

    def _load_optimizer_state_dict(self, state: Dict[str, Any]) -> None:
        training.load_from_full_optimizer_state_dict(self._model, self._optimizer, state, self._device)

    def _barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def cleanup(self) -> None:
        if getattr(self, "_metric_logger", None) is not None:
            self._metric_logger.close()
        if torch.distributed.is_initialized():
            destroy_process_group()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """
    Entry point for the recipe.

    Configurable parameters are read in the following order:
        - Parameters specified in config (see available configs through ``tune ls``)
        - Overwritten by arguments from the command-line
    """
    device = utils.get_device(device=cfg.device)
    init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.get("fsdp_cpu_offload", False):
        training.set_torch_num_threads()
    config.log_config(recipe_name="KDRecipeDistributed", cfg=cfg)
    recipe = KDRecipeDistributed(cfg=cfg)
    try:
        recipe.setup(cfg=cfg)
        recipe.train()
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
