# Forked from torchtune 0.6.1 recipes/knowledge_distillation_single_device.py
# (Copyright (c) Meta Platforms, Inc. and affiliates; BSD-style license).
#
#   tune run jsd_loss/recipes/jsd_distill_single_device.py --config configs/smollm2/...
#
# What the fork changes, and why (the pieces are jsd_loss.training's, shared with the
# distributed recipe and documented there):
#   - full-parameter students (the default; a pruned student needs it) as well as LoRA;
#   - CPU training (the stock recipe refuses it), peak RSS logged on CPU (log_peak_memory_stats
#     defaults to True); ``mixed_precision: bf16`` (bf16 autocast over the forwards and losses,
#     fp32 master weights) and ``teacher_dtype``;
#   - any KD loss from config: torchtune's, ours (JSD, true KL), chunked or not, and
#     fused-linear losses, which receive hidden states and output weights, not logits;
#   - input checks before any compute: checkpoint dirs and checksums, vocab and tokenizer,
#     each model's shape against its config.json (built on meta), whether the student can be
#     saved, every dataset row; stock keys it does not implement (compile, profiler, ...) are
#     refused when they ask for something;
#   - gradients are the token-weighted mean over the whole accumulated step (the stock
#     recipe backpropagates per-batch means and then divides by the token count again); a
#     micro-batch with no trained label contributes nothing (not 0/0 = NaN); a step with a
#     non-finite loss or gradient norm is skipped before the optimizer sees it, and more than
#     ``max_skipped_steps`` (default 3) of them stop the run;
#   - ``kd_ratio`` and ``kd_loss.temperature``: numbers or per-step schedules;
#   - ``teacher_cache: DIR``: the teacher's top-k distributions read from a cache built by
#     jsd_loss/recipes/cache_teacher.py (``teacher_cache_fallback: live`` for rows it lacks);
#     a cache of another teacher, tokenizer, dataset, max_seq_len or temperature is refused;
#   - ``teachers:``: several teachers of one vocabulary, fused by ``teachers.fusion`` into the
#     one teacher every KD loss form sees;
#   - ``feature_distillation``: a feature term, its learned projections in the recipe state;
#   - ``on_policy``: per step, with probability ``lmbda``, the responses replaced by the
#     student's own samples (or the teacher's, ``seq_kd``);
#   - HF-format student checkpoints (LoRA merged, by the model family's converter:
#     checkpointer.model_type or ``hf_converter``) every ``save_every_n_steps`` and at the end,
#     in the checkpointer's output_dir, written atomically with sha256 checksums, with the
#     recipe state for an exact mid-epoch resume (refused, naming the key, when the config
#     changes the data order, schedule or model); only the last ``keep_last_n_checkpoints``
#     (default 2) step_N kept; an earlier run is never replaced silently.
#
# The setup, the optimizer-step loop (TrainLoop), saving and cleanup are jsd_loss.training's
# KDRecipeBase, shared with the distributed recipe; this recipe says how one process places
# weights, gathers state to save and talks to the other ranks (there are none).

import sys
from typing import Any, Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config, training

from jsd_loss.training import NOT_IMPLEMENTED, SHARDING_ONLY, KDRecipeBase, RankHooks


class KDRecipeSingleDevice(KDRecipeBase):
    """
    Knowledge distillation on one device (CPU or CUDA), full-parameter or LoRA student,
    with any KD loss from config (see the header of this file for the changes to
    torchtune's recipe, and :class:`~jsd_loss.training.KDRecipeBase` for the objective).

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file
    """

    # stock config keys this recipe refuses when they ask for something (the distributed
    # recipe implements the sharding ones)
    _not_implemented = {**NOT_IMPLEMENTED, **SHARDING_ONLY}

    # how weights reach a model: in place here; the distributed recipe builds on meta, shards
    # and loads the full state dict
    _build_on_meta = False

    def _load_weights(self, model: nn.Module, state_dict: Dict[str, Any], strict: bool) -> Tuple[List[str], List[str]]:
        return model.load_state_dict(state_dict, strict=strict)

    def _check_model(self, model: nn.Module, dtype: torch.dtype) -> None:
        training.validate_expected_param_dtype(model.named_parameters(), dtype=dtype)

    def _full_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's full state dict on CPU (on rank 0; empty elsewhere)."""
        return {k: v.detach().cpu() for k, v in self._model.state_dict().items()}

    def _optimizer_state_dict(self) -> Dict[str, Any]:
        return self._optimizer.state_dict()

    def _load_optimizer_state_dict(self, state: Dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)

    def _barrier(self) -> None:
        """Wait for every rank (nothing to wait for in one process)."""

    def _all_ranks(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, by rank."""
        return [obj]

    def _rank_hooks(self) -> RankHooks:
        """What the loop needs of the other ranks (none here; the distributed recipe's collectives)."""
        return RankHooks()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """
    Entry point for the recipe.

    Configurable parameters are read in the following order:
        - Parameters specified in config (see available configs through ``tune ls``)
        - Overwritten by arguments from the command-line
    """
    config.log_config(recipe_name="KDRecipeSingleDevice", cfg=cfg)
    recipe = KDRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
