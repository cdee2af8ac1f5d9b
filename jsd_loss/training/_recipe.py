"""The distillation recipes' shared core: one class holds setup, training, saving and cleanup
for both the single-device recipe (jsd_loss/recipes/jsd_distill_single_device.py, whose
header lists what the fork of torchtune's recipe changes) and the distributed one
(jsd_distill_distributed.py); each recipe subclasses it with its hooks, so the two cannot
drift apart and neither imports the other."""

import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config, training, utils
from torchtune.recipe_interfaces import FTRecipeInterface

from jsd_loss.teacher import teacher_members
from jsd_loss.training._adapters import adapter_identity, adapter_state, student_weights
from jsd_loss.training._checkpoint import (
    DEFAULT_KEEP_LAST_N, checked_keep_last_n, latest_checkpoint, refuse_earlier_run, save_student,
)
from jsd_loss.training._config_keys import refuse_unimplemented
from jsd_loss.training._data import build_dataloader, steps_per_epoch
from jsd_loss.training._families import hf_converter
from jsd_loss.training._feature_map import feature_config
from jsd_loss.training._features import setup_feature_distillation
from jsd_loss.training._inputs import check_models_agree
from jsd_loss.training._kd_step import BatchLoss, output_weight, setup_losses
from jsd_loss.training._memory import keep_freed_cpu_memory
from jsd_loss.training._models import checked_meta_model, num_trainable, setup_student, setup_teacher
from jsd_loss.training._nonfinite import DEFAULT_MAX_SKIPPED_STEPS, NonFiniteSteps
from jsd_loss.training._on_policy import ON_POLICY_STATE, setup_on_policy
from jsd_loss.training._on_policy_config import on_policy_config
from jsd_loss.training._precision import precision_from_config
from jsd_loss.training._resume import Progress, check_resume, recipe_state, rng_state, run_identity, set_rng_state
from jsd_loss.training._schedules import KDSchedules
from jsd_loss.training._teacher_cache import open_teacher_cache
from jsd_loss.training._shapes import model_shape
from jsd_loss.training._teachers import TeachersConfig, check_teacher_checkpoints, setup_teachers, teachers_config
from jsd_loss.training._train_loop import LoopSettings, TrainLoop

log = utils.get_logger("INFO")


class KDRecipeBase(FTRecipeInterface):
    """
    What the single-device and distributed distillation recipes share: ``setup`` (input checks,
    tokenizer, losses, data, models, optimizer, resume), ``train`` (:class:`TrainLoop`),
    ``save_checkpoint`` and ``cleanup``. A recipe subclasses it and says how distribution
    changes the hooks below (how weights reach a model, what saving gathers, the ranks'
    collectives); full-parameter or LoRA student, any KD loss from config.

    The per-step objective is ``(1 - kd_ratio) * CE + kd_ratio * KD`` with both terms
    averaged over all unmasked tokens of the (accumulated) step, plus
    ``feature_distillation.weight`` times the feature loss averaged over its real tokens.

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file

    Raises:
        ValueError: for fp16, or ``dtype``, ``teacher_dtype`` and ``mixed_precision`` values
            that cannot work together (see :func:`precision_from_config`), and a
            ``feature_distillation`` block that is malformed or asks for features from a
            ``teacher_cache`` (see :func:`feature_config`).
    """

    # what a recipe defines (how distribution changes them): _not_implemented (stock config keys
    # refused when they ask for something), _build_on_meta, _load_weights(model, state_dict,
    # strict), _check_model(model, dtype), _full_state_dict(), _optimizer_state_dict(),
    # _load_optimizer_state_dict(state), _barrier(), _all_ranks(obj), _rank_hooks()
    _output_weight = staticmethod(output_weight)  # the fused-linear losses' output weight

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
        # single process; the distributed recipe sets its own
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
            if hasattr(self._metric_logger, "truncate_after"):
                self._metric_logger.truncate_after(self._progress.global_step)
            if self._on_policy is not None:
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
        model, self._lora = setup_student(
            cfg.model, student_state_dict, device=self._device, dtype=self._dtype, seed=self.seed,
            activation_checkpointing=cfg.get("enable_activation_checkpointing", False),
            on_meta=self._build_on_meta, load=self._load_weights, adapters=adapters,
        )
        self._model = self._placed(model, self._dtype, f"Student model ({'LoRA' if self._lora else 'full-parameter'}, "
                                   f"{num_trainable(model):,} trainable parameters) is initialized with precision {self._dtype}.")
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

    def _placed(self, model: nn.Module, dtype: torch.dtype, message: str) -> nn.Module:
        """``model``, its parameters checked, once every rank has it."""
        self._check_model(model, dtype)
        utils.log_rank_zero(log, message)
        self._barrier()
        return model

    def _setup_teacher_model(self, model_cfg: DictConfig, model_state_dict: Dict[str, Any],
                             who: str = "teacher") -> nn.Module:
        dtype = self._precision.teacher_dtype
        model = setup_teacher(model_cfg, model_state_dict, device=self._device, dtype=dtype,
                              on_meta=self._build_on_meta, load=self._load_weights)
        return self._placed(model, dtype, f"{who[0].upper() + who[1:]} model is initialized with precision {dtype}.")

    def _setup_teachers(self, teachers: TeachersConfig) -> nn.Module:
        """The single teacher, or the listed ones as one TeacherEnsemble (each set up as the single one is)."""
        return setup_teachers(teachers, self._setup_teacher_model, log=log)

    # ------------------------------------------------------------------ checkpoints

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
