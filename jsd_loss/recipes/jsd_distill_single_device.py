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
# The optimizer-step loop is jsd_loss.training's TrainLoop; the distributed recipe hands it
# its collectives (RankHooks). This class sets up, saves and cleans up.

import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config, training, utils
from torchtune.recipe_interfaces import FTRecipeInterface

from jsd_loss.training import (
    DEFAULT_KEEP_LAST_N, DEFAULT_MAX_SKIPPED_STEPS, NOT_IMPLEMENTED, ON_POLICY_STATE, SHARDING_ONLY, BatchLoss,
    KDSchedules, LoopSettings, NonFiniteSteps, Progress, RankHooks, TeachersConfig, TrainLoop, adapter_identity,
    adapter_state, build_dataloader, check_models_agree, check_resume, check_teacher_checkpoints, checked_keep_last_n,
    checked_meta_model, feature_config, hf_converter, keep_freed_cpu_memory, latest_checkpoint, model_shape,
    num_trainable, on_policy_config, open_teacher_cache, output_weight, precision_from_config, recipe_state,
    refuse_earlier_run, refuse_unimplemented, rng_state, run_identity, save_student, set_rng_state,
    setup_feature_distillation, setup_losses, setup_on_policy, setup_student, setup_teacher, setup_teachers,
    steps_per_epoch, student_weights, teachers_config,
)
from jsd_loss.teacher import teacher_members

log = utils.get_logger("INFO")


class KDRecipeSingleDevice(FTRecipeInterface):
    """
    Knowledge distillation on one device (CPU or CUDA), full-parameter or LoRA student,
    with any KD loss from config (see the header of this file for the changes to
    torchtune's recipe).

    The per-step objective is ``(1 - kd_ratio) * CE + kd_ratio * KD`` with both terms
    averaged over all unmasked tokens of the (accumulated) step, plus
    ``feature_distillation.weight`` times the feature loss averaged over its real tokens.

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file

    Raises:
        ValueError: for fp16, or ``dtype``, ``teacher_dtype`` and ``mixed_precision`` values
            that cannot work together (see :func:`~jsd_loss.training.precision_from_config`), and a
            ``feature_distillation`` block that is malformed or asks for features from a
            ``teacher_cache`` (see :func:`~jsd_loss.training.feature_config`).
    """

    # stock config keys this recipe refuses when they ask for something (the distributed
    # recipe implements the sharding ones)
    _not_implemented = {**NOT_IMPLEMENTED, **SHARDING_ONLY}

    def __init__(self, cfg: DictConfig) -> None:
        refuse_unimplemented(cfg, self._not_implemented)
        self._device = utils.get_device(device=cfg.device)
        self._precision = precision_from_config(cfg, self._device)  # refuses what cannot work
        self._dtype = self._precision.dtype
        self._feature_config = feature_config(cfg)  # None: off
        self._on_policy_config = on_policy_config(cfg)  # None: off; refuses what cannot work
        self._teachers = teachers_config(  # the single teacher or teachers:; refuses what cannot work
            cfg, features=self._feature_config is not None,
            seq_kd=self._on_policy_config is not None and self._on_policy_config.seq_kd,
        )
        if self._device.type == "cpu" and cfg.get("keep_freed_cpu_memory", False):
            keep_freed_cpu_memory()  # fewer page faults on each step's large tensors

        # checkpoints go where the checkpointer says (its output_dir), as in the stock recipe
        self._output_dir = Path(cfg.checkpointer.get("output_dir", cfg.output_dir))
        self._keep_last_n = checked_keep_last_n(cfg.get("keep_last_n_checkpoints", DEFAULT_KEEP_LAST_N))
        self.seed = training.set_seed(seed=cfg.seed, debug_mode=cfg.get("cudnn_deterministic_mode", None))
        self._progress = Progress(total_epochs=cfg.epochs)  # epochs run and global step: the loop's
        self.max_steps_per_epoch = cfg.max_steps_per_epoch
        self._resume_from_checkpoint = cfg.get("resume_from_checkpoint", False)
        self._settings = LoopSettings.from_config(cfg)  # accumulation, clipping, log and save intervals
        self._schedules = KDSchedules(cfg)  # kd_ratio and KD temperature per step (numbers or schedules)
        self._nonfinite = NonFiniteSteps(cfg.get("max_skipped_steps", DEFAULT_MAX_SKIPPED_STEPS), log=log)
        # single process; the distributed recipe overrides these
        self.world_size, self.rank, self._is_rank_zero = 1, 0, True

    # ------------------------------------------------------------------ checks

    def _validate_inputs(self, cfg: DictConfig) -> None:
        """Cheap checks that must fail before any model is built or data tokenized."""
        # every teacher against the student (and the others): vocabulary, tokenizer, checksums
        self._student_hf_config, teacher_hf_configs = check_teacher_checkpoints(cfg.checkpointer, self._teachers)
        self._student_dir = Path(cfg.checkpointer.checkpoint_dir)
        # the models as their configs build them, on meta (no memory, no weights read): of
        # their checkpoints' shapes, and a student that saving can convert
        student = checked_meta_model(cfg.model, self._dtype, self._student_hf_config, "student", self._student_dir)
        for teacher, teacher_hf_config in zip(self._teachers.members, teacher_hf_configs):
            checked_meta_model(teacher.model, self._precision.teacher_dtype, teacher_hf_config, teacher.who,
                               teacher.checkpoint_dir)
        self._to_hf = hf_converter(cfg.checkpointer, self._student_hf_config, student, cfg.get("hf_converter"))
        self._run_identity = run_identity(  # what a resume must keep
            cfg, self.world_size, model_shape(student),
            adapter_identity(student, cfg.model.get("lora_rank"), cfg.model.get("lora_alpha")),
            teachers=self._teachers.identity(), on_policy=self._on_policy_config,
        )
        self._features = setup_feature_distillation(  # the layer map checked; None when off (one teacher)
            self._feature_config, self._student_hf_config, teacher_hf_configs[0], self._student_dir,
            seed=self.seed, device=self._device,
        )
        # removed once setup has succeeded
        self._replaced_run = refuse_earlier_run(
            self._output_dir, self._resume_from_checkpoint, cfg.get("overwrite_output", False)
        )

    def _start_output(self, cfg: DictConfig) -> None:
        """The point of no return, reached only when setup has succeeded: the run being
        replaced is removed, the config logged and a fresh metrics log started (a resumed run
        keeps its records up to the checkpoint)."""
        if self._is_rank_zero:
            for name in self._replaced_run:
                shutil.rmtree(self._output_dir / name)
            self._metric_logger.log_config(cfg)
        self._metric_logger_truncate(self._progress.global_step)
        if self._is_rank_zero and self._on_policy is not None:
            self._on_policy.truncate_samples_after(self._progress.global_step)
        self._barrier()

    # ------------------------------------------------------------------ setup

    def setup(self, cfg: DictConfig) -> None:
        """Cheap checks, tokenizer, losses and data (every row validated) come before the
        models are loaded, so bad input fails in seconds."""
        self._validate_inputs(cfg)
        self._metric_logger = config.instantiate(cfg.metric_logger)
        self._tokenizer = config.instantiate(cfg.tokenizer)

        # fused-linear KD losses take hidden states and output weights instead of logits
        self._losses = setup_losses(cfg.loss, self._schedules.kd_loss_config(cfg.kd_loss))
        self._fused_kd = self._losses.fused
        log.info("Loss is initialized.")

        resume = self._latest_checkpoint() if self._resume_from_checkpoint else None  # (step_N dir, recipe state)
        state = resume[1] if resume is not None else None
        mid_epoch = state is not None and state["steps_done_this_epoch"] > 0
        self._dataloader = build_dataloader(
            cfg.dataset, self._tokenizer, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=self.seed,
            ignore_index=self._losses.ignore_index, world_size=self.world_size, rank=self.rank,
            state_dict=state[training.DATALOADER_KEY] if mid_epoch else None,
        )
        self._progress.steps_per_epoch = steps_per_epoch(
            len(self._dataloader), cfg.batch_size, self._settings.gradient_accumulation_steps, self.max_steps_per_epoch
        )
        self._teacher_cache = None
        if cfg.get("teacher_cache", None):
            self._teacher_cache = open_teacher_cache(
                cfg, self._dataloader.dataset, vocab_size=self._student_hf_config["vocab_size"],
                world_size=self.world_size, log=log,
            )
        self._on_policy = setup_on_policy(  # every prompt the run draws checked
            self._on_policy_config, cfg, self._dataloader.dataset, self._tokenizer, seed=self.seed, rank=self.rank,
            world_size=self.world_size, ignore_index=self._losses.ignore_index, device=self._device, log=log,
            dtypes=(self._dtype, self._precision.teacher_dtype),
            samples_path=Path(getattr(self._metric_logger, "log_dir", self._output_dir)) / "samples.jsonl"
            if self._is_rank_zero else None,
        )
        live_teacher = self._teacher_cache is None or cfg.get("teacher_cache_fallback", "error") == "live"

        # a LoRA/DoRA student resumes on its frozen base, with the saved adapters
        student_state_dict, adapters = student_weights(cfg.checkpointer, self._run_identity["adapters"], resume)
        self._model = self._setup_model(
            cfg_model=cfg.model, enable_activation_checkpointing=cfg.get("enable_activation_checkpointing", False),
            model_state_dict=student_state_dict, adapters=adapters,
        )
        self._teacher_model = None
        if live_teacher:
            self._teacher_model = self._setup_teachers(self._teachers)
        for teacher in teacher_members(self._teacher_model) or [self._model]:
            check_models_agree(self._model, teacher, self._tokenizer)
        if not self._fused_kd and self._losses.num_output_chunks:
            for model in (self._model, self._teacher_model):
                if model is not None:
                    model.set_num_output_chunks(self._losses.num_output_chunks)

        self._optimizer = config.instantiate(cfg.optimizer, [p for p in self._model.parameters() if p.requires_grad])
        if state is not None:
            self._load_optimizer_state_dict(state[training.OPT_KEY])
        self._lr_scheduler = config.instantiate(
            cfg.lr_scheduler, self._optimizer,
            num_training_steps=self._progress.total_steps, last_epoch=self._progress.global_step - 1,
        )
        if self._features is not None:
            self._features.setup_optimizer(
                cfg.optimizer, cfg.lr_scheduler, num_training_steps=self._progress.total_steps,
                last_epoch=self._progress.global_step - 1, state=state,
            )
        if state is not None:
            set_rng_state(state, self.rank, self._device)
            if self._on_policy is not None:
                self._on_policy.load_state_dict(state.get(ON_POLICY_STATE), self.rank)
        self._start_output(cfg)

    def _latest_checkpoint(self) -> Tuple[Path, Dict[str, Any]]:
        """The step checkpoint to resume and its recipe state, checked against this config."""
        path, state = latest_checkpoint(self._output_dir, self.seed)
        check_resume(state, self._run_identity, path)
        self._progress.load_state_dict(state)
        self._nonfinite.skipped = state.get("skipped_steps", 0)
        log.info(f"Resuming from {path} (step {self._progress.global_step}).")
        return path, state

    def _metric_logger_truncate(self, step: int) -> None:
        if self._is_rank_zero and hasattr(self._metric_logger, "truncate_after"):
            self._metric_logger.truncate_after(step)

    # how weights reach a model: in place here; the distributed recipe builds on meta, shards
    # and loads the full state dict
    _build_on_meta = False

    def _load_weights(self, model: nn.Module, state_dict: Dict[str, Any], strict: bool) -> Tuple[List[str], List[str]]:
        return model.load_state_dict(state_dict, strict=strict)

    def _check_model(self, model: nn.Module, dtype: torch.dtype) -> None:
        training.validate_expected_param_dtype(model.named_parameters(), dtype=dtype)

    def _setup_model(
        self, cfg_model: DictConfig, enable_activation_checkpointing: bool, model_state_dict: Dict[str, Any],
        adapters: Optional[Dict[str, torch.Tensor]] = None,
    ) -> nn.Module:
        model, self._lora = setup_student(
            cfg_model, model_state_dict, device=self._device, dtype=self._dtype, seed=self.seed,
            activation_checkpointing=enable_activation_checkpointing, on_meta=self._build_on_meta,
            load=self._load_weights, adapters=adapters,
        )
        self._check_model(model, self._dtype)
        utils.log_rank_zero(
            log,
            f"Student model ({'LoRA' if self._lora else 'full-parameter'}, {num_trainable(model):,} trainable "
            f"parameters) is initialized with precision {self._dtype}.",
        )
        self._barrier()
        return model

    def _setup_teacher_model(self, model_cfg: DictConfig, model_state_dict: Dict[str, Any],
                             who: str = "teacher") -> nn.Module:
        model = setup_teacher(
            model_cfg, model_state_dict, device=self._device, dtype=self._precision.teacher_dtype,
            on_meta=self._build_on_meta, load=self._load_weights,
        )
        self._check_model(model, self._precision.teacher_dtype)
        utils.log_rank_zero(log, f"{who[0].upper() + who[1:]} model is initialized with precision {self._precision.teacher_dtype}.")
        self._barrier()
        return model

    def _setup_teachers(self, teachers: TeachersConfig) -> nn.Module:
        """The single teacher, or the listed ones as one TeacherEnsemble (each set up as the single one is)."""
        return setup_teachers(teachers, self._setup_teacher_model, log=log)

    # ------------------------------------------------------------------ checkpoints

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

    def save_checkpoint(self, name: str, with_recipe_state: bool) -> Path:
        """Write ``output_dir/<name>`` as a standard HF model directory, atomically; a step
        checkpoint (``with_recipe_state``) with what an exact resume needs. Every rank calls it."""
        state_dict = self._full_state_dict()
        opt_state = self._optimizer_state_dict() if with_recipe_state else None
        rng_states = self._all_ranks(rng_state(self._device)) if with_recipe_state else None
        on_policy = self._all_ranks(self._on_policy.state_dict()) if with_recipe_state and self._on_policy else None
        if self._is_rank_zero:
            state = recipe_state(
                optimizer=opt_state, dataloader=self._dataloader.state_dict(), seed=self.seed, progress=self._progress,
                rng_states=rng_states, run=self._run_identity, world_size=self.world_size,
                skipped_steps=self._nonfinite.skipped,
                features=self._features.recipe_state() if self._features is not None else None,
                # a LoRA/DoRA student's adapters: the HF weights are merged (exact resume)
                adapters=adapter_state(state_dict, self._lora.params) if self._lora is not None else None,
                on_policy=on_policy,
            ) if with_recipe_state else None
            save_student(self._output_dir, name, state_dict, lora=self._lora, to_hf=self._to_hf,
                         hf_config=self._student_hf_config, copy_from=self._student_dir, recipe_state=state,
                         keep_last_n=self._keep_last_n, log=log)
        self._barrier()
        return self._output_dir / name

    # ------------------------------------------------------------------ training

    _output_weight = staticmethod(output_weight)

    def _rank_hooks(self) -> RankHooks:
        """What the loop needs of the other ranks (none here; the distributed recipe's collectives)."""
        return RankHooks()

    def train(self) -> None:
        """The optimizer steps from where the run stands to its end, then ``final`` saved
        (:class:`~jsd_loss.training.TrainLoop`)."""
        loss = BatchLoss(self._model, self._teacher_model, self._teacher_cache, self._losses, self._precision,
                         self._device, features=self._features, weight_of=self._output_weight)
        TrainLoop(
            loss, self._optimizer, self._lr_scheduler, self._dataloader, schedules=self._schedules,
            nonfinite=self._nonfinite, metric_logger=self._metric_logger, progress=self._progress,
            settings=self._settings, save_checkpoint=self.save_checkpoint, on_policy=self._on_policy,
            ranks=self._rank_hooks(),
        ).run()

    def cleanup(self) -> None:
        self._metric_logger.close()


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
