# Distributed counterpart of jsd_loss/recipes/jsd_distill_single_device.py on torch.distributed FSDP2,
# after torchtune 0.6.1 recipes/knowledge_distillation_distributed.py (Copyright (c) Meta
# Platforms, Inc. and affiliates; BSD-style license).
#
#   tune run --nproc_per_node 2 jsd_loss/recipes/jsd_distill_distributed.py --config ...
#
# Both recipes subclass jsd_loss.training's KDRecipeBase (setup, the optimizer-step loop,
# saving, cleanup), so the two cannot drift apart; this one says what distribution changes
# (how weights reach a model, what saving gathers, the collectives TrainLoop is handed as
# RankHooks):
#   - process group: NCCL on CUDA, gloo on CPU (initialised in recipe_main);
#   - student and teacher (each of ``teachers:`` alike) built on meta and sharded with FSDP2
#     (training.shard_model; also custom_sharded_layers), weights loaded from the full state
#     dict with training.load_from_full_model_state_dict;
#   - each rank reads its own shard of every batch (distributed sampler); the step's token
#     count and losses are all-reduced, and gradients rescaled by world_size / tokens to undo
#     FSDP2's gradient averaging, so a step equals the single-device step at the same global batch;
#   - checkpoints: full model and optimizer state, and every rank's RNG state, consolidated
#     on rank 0, which alone writes (atomically); every rank waits at a barrier;
#   - fused-linear KD losses read the output weight after the forward, so the root module
#     (embeddings, final norm, output) is not resharded after forward: the loss sees the
#     unsharded weight and FSDP2 reduce-scatters its gradient with the others;
#   - LoRA adapters are drawn from the run's seed on every rank before sharding (the frozen
#     base is built on meta and loaded from the checkpoint).
#   - feature distillation needs nothing here: the learned projections are replicated (drawn
#     from the seed on every rank) and jsd_loss.training sums their gradients and the step's
#     token counts over the ranks.
#   - on-policy generation: every rank draws the same coin per step, samples with its own
#     generator, and takes generation steps until every rank's rows have stopped (each forward
#     of a sharded model is a collective).

import sys
from functools import partial
from typing import Any, Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed import destroy_process_group, init_process_group
from torch.distributed.tensor import DTensor
from torchtune import config, training, utils

from jsd_loss.training import NOT_IMPLEMENTED, KDRecipeBase, RankHooks, output_weight


class KDRecipeDistributed(KDRecipeBase):
    """Knowledge distillation with FSDP2 across ``torchrun`` processes (any number of nodes).

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file
    """

    _not_implemented = NOT_IMPLEMENTED  # fsdp_cpu_offload and custom_sharded_layers work here

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self._is_rank_zero = self.rank == 0
        self._reshard_after_forward = cfg.get("fsdp_reshard_after_forward", True)
        self._cpu_offload = cfg.get("fsdp_cpu_offload", False)
        self._custom_sharded_layers = cfg.get("custom_sharded_layers", None)

    _build_on_meta = True

    def _load_weights(self, model: nn.Module, state_dict: Dict[str, Any], strict: bool) -> Tuple[List[str], List[str]]:
        """Shard ``model`` (built on meta) with FSDP2 and load the full state dict into the shards."""
        training.shard_model(
            model=model,
            shard_conditions=[partial(training.get_shard_conditions, names_to_match=self._custom_sharded_layers)],
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

    def _check_model(self, model: nn.Module, dtype: torch.dtype) -> None:
        training.validate_no_params_on_meta_device(model)

    @staticmethod
    def _output_weight(model: nn.Module) -> torch.Tensor:
        weight = output_weight(model)
        if isinstance(weight, DTensor):
            raise RuntimeError(
                "the output weight is still sharded after the forward; the fused-linear KD loss "
                "needs the root module unsharded (set_reshard_after_forward(False) on the root)"
            )
        return weight

    def _rank_hooks(self) -> RankHooks:
        # FSDP2 averages gradients over ranks: world_size / tokens makes them the step's mean
        return RankHooks(self._is_rank_zero, float(self.world_size), self._reduce_step_stats, self._all_done)

    def _reduce_step_stats(self, num_tokens, class_loss_sum, kd_loss_sum):
        """Token count and summed losses of the whole step, over all ranks."""
        stats = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=self._device).detach()
                             for x in (num_tokens, class_loss_sum, kd_loss_sum)])
        torch.distributed.all_reduce(stats)
        return stats[0], stats[1], stats[2]

    def _full_state_dict(self) -> Dict[str, torch.Tensor]:
        return training.gather_cpu_state_dict(self._model, self._is_rank_zero, device=self._device)

    def _optimizer_state_dict(self) -> Dict[str, Any]:
        return training.get_full_optimizer_state_dict(
            self._model, self._optimizer, self._is_rank_zero, device=self._device
        )

    def _load_optimizer_state_dict(self, state: Dict[str, Any]) -> None:
        training.load_from_full_optimizer_state_dict(self._model, self._optimizer, state, self._device)

    def _barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _all_ranks(self, obj: Any) -> List[Any]:
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def _all_done(self, done: bool) -> bool:
        """Whether every rank is ``done`` (generating: each rank's forwards must match)."""
        flag = torch.tensor([int(done)], device=self._device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def cleanup(self) -> None:
        if getattr(self, "_metric_logger", None) is not None:
            self._metric_logger.close()
        if torch.distributed.is_initialized():
            destroy_process_group()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point on every rank (config as for the single-device recipe, command-line
    overrides applied): joins the process group (NCCL on CUDA, gloo on CPU), runs the recipe,
    and cleans up (metric log closed, group left) even when setup or training raises."""
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
