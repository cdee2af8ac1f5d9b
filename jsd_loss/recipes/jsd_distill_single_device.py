# Forked from torchtune 0.6.1 recipes/knowledge_distillation_single_device.py
# (Copyright (c) Meta Platforms, Inc. and affiliates; BSD-style license).
#
#   tune run jsd_loss/recipes/jsd_distill_single_device.py --config configs/smollm2/...
#
# What the fork changes, and why:
#   - full-parameter students (the default; a pruned student needs it) as well as LoRA;
#     student and teacher setup (adapters, weights) is jsd_loss.training's, shared with the
#     distributed recipe;
#   - CPU training (the stock recipe refuses it), peak RSS logged on CPU
#     (log_peak_memory_stats defaults to True); ``mixed_precision: bf16`` (bf16 autocast over
#     the forwards and losses, fp32 master weights) and ``teacher_dtype`` (jsd_loss.training);
#   - any KD loss from config: torchtune's, ours (JSD, true KL), chunked or not, and
#     fused-linear losses (declared by jsd_loss.losses.FusedLinearDistillLoss), which
#     receive hidden states and output weights, not logits;
#   - input checks before any compute: checkpoint dirs, teacher/student vocab and tokenizer,
#     each model config's shape against its checkpoint's config.json (built on meta, before
#     any weights load), whether the student can be saved, dataset rows (the dataset builder
#     validates every row);
#     stock keys it does not implement (compile, profiler, activation offloading, ...) are
#     refused when they ask for something;
#   - gradients are the token-weighted mean over the whole accumulated step (the stock
#     recipe backpropagates per-batch means and then divides by the token count again);
#     a micro-batch with no trained label contributes nothing (not 0/0 = NaN); a step with a
#     non-finite loss or gradient norm is skipped before the optimizer sees it, and more than
#     ``max_skipped_steps`` (default 3) of them stop the run (jsd_loss.training.NonFiniteSteps);
#   - ``teacher_cache: DIR``: the teacher's top-k distributions read from a cache built by
#     jsd_loss/recipes/cache_teacher.py instead of computed; the teacher is then not loaded
#     (unless ``teacher_cache_fallback: live`` for rows the cache lacks), and a cache of
#     another teacher, tokenizer, dataset, max_seq_len or temperature is refused at setup;
#   - ``teachers:`` (beside the single ``teacher_model``/``teacher_checkpointer``, not with
#     them): several teachers of one tokenizer and vocabulary, each a name, a weight, a model and
#     a checkpointer, fused by ``teachers.fusion`` (mixture, product, min_ce;
#     jsd_loss.teacher.TeacherEnsemble) into the one teacher every KD loss form sees; each is
#     checked as the single teacher is (checkpoints, shapes on meta, vocabulary, also against
#     the others) and belongs to the resume identity; not with a teacher_cache, feature
#     distillation or on-policy seq_kd (refused at setup);
#   - ``feature_distillation``: an optional feature term (the student's intermediate features
#     against the teacher's, from the same teacher forward; jsd_loss.training's
#     FeatureDistiller), its learned projections saved in the recipe state only;
#   - ``on_policy``: per optimizer step, with probability ``lmbda``, the batches' responses
#     replaced by the student's own samples (or the teacher's, ``seq_kd``) before the KD step
#     (jsd_loss.training's OnPolicy; generation with a KV cache, jsd_loss.generation);
#   - HF-format student checkpoints (LoRA merged) every ``save_every_n_steps`` and at the
#     end, in the checkpointer's output_dir, written atomically by the converter of the model
#     family (checkpointer.model_type, or hf_converter), with optimizer/dataloader/RNG state
#     for an exact mid-epoch resume (refused, naming the key, when the config changes the data
#     order, schedule or model; every rank's CPU and CUDA RNG restored; a LoRA/DoRA student's
#     adapters saved in the recipe state and restored onto its original frozen base), sha256
#     checksums written, and verified at setup and on resume, only the last ``keep_last_n_checkpoints`` (default 2)
#     step_N kept; an earlier run there is never replaced silently.

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config, training, utils
from torchtune.recipe_interfaces import FTRecipeInterface
from tqdm import tqdm

from jsd_loss.training import (
    ADAPTER_KEY,
    DEFAULT_KEEP_LAST_N,
    DEFAULT_MAX_SKIPPED_STEPS,
    FEATURE_STATE,
    KDSchedules,
    NOT_IMPLEMENTED,
    ON_POLICY_STATE,
    RNG_KEY,
    RUN_KEY,
    NonFiniteSteps,
    SHARDING_ONLY,
    adapter_identity,
    adapter_state,
    batch_teacher,
    build_dataloader,
    capture_features,
    check_teacher_checkpoints,
    check_resume,
    checked_keep_last_n,
    check_models_agree,
    checked_meta_model,
    feature_config,
    hf_converter,
    kd_step,
    keep_freed_cpu_memory,
    latest_checkpoint,
    loss_labels,
    merged_hf_state_dict,
    model_shape,
    num_trainable,
    on_policy_config,
    open_teacher_cache,
    output_weight,
    peak_memory_gib,
    precision_from_config,
    prune_checkpoints,
    refuse_earlier_run,
    refuse_unimplemented,
    reset_peak_memory,
    resume_weights,
    rng_state,
    run_identity,
    set_rng_state,
    setup_feature_distillation,
    setup_losses,
    setup_on_policy,
    setup_student,
    setup_teacher,
    steps_per_epoch,
    teachers_config,
    TeachersConfig,
    write_checkpoint,
)
from jsd_loss.teacher import TeacherEnsemble, teacher_members

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
        self._log_every_n_steps = cfg.get("log_every_n_steps", 1)
        self._log_peak_memory_stats = cfg.get("log_peak_memory_stats", True)
        self._save_every_n_steps = cfg.get("save_every_n_steps", None)
        self._keep_last_n = checked_keep_last_n(cfg.get("keep_last_n_checkpoints", DEFAULT_KEEP_LAST_N))
        self.seed = training.set_seed(seed=cfg.seed, debug_mode=cfg.get("cudnn_deterministic_mode", None))
        self.epochs_run = 0
        self.total_epochs = cfg.epochs
        self.max_steps_per_epoch = cfg.max_steps_per_epoch
        self.global_step = 0
        self._resume_from_checkpoint = cfg.get("resume_from_checkpoint", False)
        self._gradient_accumulation_steps = cfg.gradient_accumulation_steps
        self._clip_grad_norm = cfg.get("clip_grad_norm", None)
        self._schedules = KDSchedules(cfg)  # kd_ratio and KD temperature per step (numbers or schedules)
        self._kd_ratio = self._schedules.kd_ratio.start
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
            teachers=self._teachers.identity(),
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
        self._metric_logger_truncate(self.global_step)
        if self._is_rank_zero and self._on_policy is not None:
            self._on_policy.truncate_samples_after(self.global_step)
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

        resume_state = self._latest_checkpoint() if self._resume_from_checkpoint else None
        mid_epoch = resume_state is not None and resume_state["state"]["steps_done_this_epoch"] > 0
        self._dataloader = build_dataloader(
            cfg.dataset, self._tokenizer, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=self.seed,
            ignore_index=self._losses.ignore_index, world_size=self.world_size, rank=self.rank,
            state_dict=resume_state["state"][training.DATALOADER_KEY] if mid_epoch else None,
        )
        self._steps_per_epoch = steps_per_epoch(
            len(self._dataloader), cfg.batch_size, self._gradient_accumulation_steps, self.max_steps_per_epoch
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

        student_state_dict, adapters = self._load_student_checkpoint(cfg.checkpointer, resume_state)
        self._model = self._setup_model(
            cfg_model=cfg.model,
            enable_activation_checkpointing=cfg.get("enable_activation_checkpointing", False),
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
        if resume_state is not None:
            self._load_optimizer_state_dict(resume_state["state"][training.OPT_KEY])
        self._lr_scheduler = config.instantiate(
            cfg.lr_scheduler, self._optimizer,
            num_training_steps=self.total_epochs * self._steps_per_epoch, last_epoch=self.global_step - 1,
        )
        if self._features is not None:
            self._features.setup_optimizer(
                cfg.optimizer, cfg.lr_scheduler, num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1, state=resume_state["state"] if resume_state is not None else None,
            )
        if resume_state is not None:
            set_rng_state(resume_state["state"], self.rank, self._device)
            if self._on_policy is not None:
                self._on_policy.load_state_dict(resume_state["state"].get(ON_POLICY_STATE), self.rank)

        self.ignore_labels_cache = torch.full((cfg.batch_size, 1), self._losses.ignore_index, device=self._device)
        self._start_output(cfg)

    def _latest_checkpoint(self) -> Optional[Dict[str, Any]]:
        path, state = latest_checkpoint(self._output_dir, self.seed)
        check_resume(state, self._run_identity, path)
        self.global_step = state["global_step"]
        self._nonfinite.skipped = state.get("skipped_steps", 0)
        self.epochs_run = state[training.EPOCHS_KEY]
        log.info(f"Resuming from {path} (step {self.global_step}).")
        return {"dir": path, "state": state}

    def _load_student_checkpoint(self, cfg_checkpointer: DictConfig, resume_state) -> Tuple[Dict[str, Any], Any]:
        """The student's weights and, for a resumed LoRA/DoRA student, its adapters: a full
        student resumes from the step checkpoint's weights, an adapter one from its frozen
        base (the original checkpoint) and the adapters saved in the recipe state."""
        def load(checkpoint_dir: Path) -> Dict[str, Any]:
            cfg = DictConfig({**cfg_checkpointer, "checkpoint_dir": str(checkpoint_dir)})
            return config.instantiate(cfg).load_checkpoint()[training.MODEL_KEY]

        if resume_state is None:
            return load(cfg_checkpointer.checkpoint_dir), None
        return resume_weights(resume_state["state"], self._run_identity["adapters"], load, resume_state["dir"],
                              Path(cfg_checkpointer.checkpoint_dir))

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
        """The single teacher, or the listed ones (each set up as the single one is, one
        checkpoint in memory at a time) as one TeacherEnsemble."""
        models = [
            self._setup_teacher_model(t.model, config.instantiate(t.checkpointer).load_checkpoint()[training.MODEL_KEY],
                                      who=t.who)
            for t in teachers.members
        ]
        if not teachers.listed:
            return models[0]
        utils.log_rank_zero(log, f"{len(models)} teachers fused by {teachers.fusion}: " + ", ".join(
            f"{t.name} (weight {t.weight:g})" for t in teachers.members))
        return TeacherEnsemble(models, [t.name for t in teachers.members], [t.weight for t in teachers.members],
                               teachers.fusion)

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

    def _all_done(self, done: bool) -> bool:
        """Whether every rank is ``done`` (generating: each rank's forwards must match)."""
        return done

    def save_checkpoint(self, name: str, with_recipe_state: bool) -> Path:
        """Write ``output_dir/<name>`` as a standard HF model directory, atomically."""
        target = self._output_dir / name
        state_dict = self._full_state_dict()
        opt_state = self._optimizer_state_dict() if with_recipe_state else None
        rng_states = self._all_ranks(rng_state(self._device)) if with_recipe_state else None
        on_policy = self._all_ranks(self._on_policy.state_dict()) if with_recipe_state and self._on_policy else None
        if self._is_rank_zero:
            recipe_state = {
                training.OPT_KEY: opt_state,
                training.DATALOADER_KEY: self._dataloader.state_dict(),
                training.SEED_KEY: self.seed,
                training.EPOCHS_KEY: self.epochs_run,
                "global_step": self.global_step,
                "steps_done_this_epoch": self.global_step - self.epochs_run * self._steps_per_epoch,
                RNG_KEY: rng_states,
                RUN_KEY: self._run_identity,
                "world_size": self.world_size,
                "skipped_steps": self._nonfinite.skipped,
                **({FEATURE_STATE: self._features.recipe_state()} if self._features is not None else {}),
                # a LoRA/DoRA student's adapters: the HF weights are merged (exact resume)
                **({ADAPTER_KEY: adapter_state(state_dict, self._lora.params)} if self._lora is not None else {}),
                **({ON_POLICY_STATE: on_policy} if on_policy is not None else {}),
            } if with_recipe_state else None
            hf_state = merged_hf_state_dict(state_dict, self._lora, self._to_hf)
            write_checkpoint(target, hf_state, self._student_hf_config, self._student_dir, recipe_state)
            log.info(f"Saved {'checkpoint' if with_recipe_state else 'model'} to {target}")
            if with_recipe_state:  # only once the new one is complete
                for name in prune_checkpoints(self._output_dir, self._keep_last_n):
                    log.info(f"Removed {self._output_dir / name} (keep_last_n_checkpoints={self._keep_last_n})")
        self._barrier()
        return target

    # ------------------------------------------------------------------ training

    _output_weight = staticmethod(output_weight)

    def _loss_step(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """CE and KD (means over the batch's label tokens) and the feature loss summed over its
        real tokens (None when feature distillation is off)."""
        labels = batch["labels"]
        # Shift labels: position t predicts token t + 1
        labels = torch.hstack((labels[..., 1:], self.ignore_labels_cache[: labels.shape[0]]))
        teacher = batch_teacher(self._teacher_cache, self._teacher_model, batch, labels, self._losses.ignore_index)
        with self._precision.autocast(self._device), capture_features(self._features, self._model, teacher) as feats:
            class_loss, kd_loss = kd_step(  # never all labels ignored: no 0/0 (weighted by 0 tokens)
                self._model, teacher, batch["tokens"], loss_labels(labels, self._losses.ignore_index), self._losses,
                dtype=self._dtype,
                mask=batch.get("mask", None), input_pos=batch.get("input_pos", None), weight_of=self._output_weight,
            )
            return class_loss, kd_loss, feats.loss_sum(batch["row_ids"]) if feats is not None else None

    # the number the summed per-token loss gradients are multiplied by before dividing by
    # the step's token count; FSDP2 averages gradients over ranks, so the distributed
    # recipe sets it to the world size
    _grad_scale_numerator = 1.0

    def _reduce_step_stats(self, num_tokens, class_loss_sum, kd_loss_sum):
        """Token count and summed losses of the whole step (all ranks in the distributed recipe)."""
        return num_tokens, class_loss_sum, kd_loss_sum

    def train(self) -> None:
        reset_peak_memory(self._device)
        t0 = time.perf_counter()
        running_class_loss, running_kd_loss, num_tokens = 0.0, 0.0, 0
        self._model.train()
        steps_done_this_epoch = self.global_step - self.epochs_run * self._steps_per_epoch
        for curr_epoch in range(self.epochs_run, self.total_epochs):
            pbar = tqdm(total=self._steps_per_epoch, initial=steps_done_this_epoch,
                        disable=None if self._is_rank_zero else True)
            self._dataloader.sampler.set_epoch(curr_epoch)
            batches = enumerate(self._dataloader, start=steps_done_this_epoch * self._gradient_accumulation_steps)
            if self._features is not None:  # read a step ahead: its token counts scale the feature term
                batches = self._features.batches(batches, self._gradient_accumulation_steps, self._losses.ignore_index)
            for idx, batch in batches:
                batch = {k: v.to(self._device) for k, v in batch.items()}
                if idx % self._gradient_accumulation_steps == 0:  # this step's kd_ratio and temperature
                    scheduled = self._schedules.step(self._losses.kd_loss, self.global_step,
                                                     self.total_epochs * self._steps_per_epoch)
                    self._kd_ratio = scheduled["kd_ratio"]
                    if self._on_policy is not None:  # this step's batches: the data's, or generated
                        self._on_policy.begin_step(self.global_step + 1)
                if self._on_policy is not None:
                    batch = self._on_policy.batch(batch, self._model, self._teacher_model, all_done=self._all_done)
                current_num_tokens = (batch["labels"][..., 1:] != self._losses.ignore_index).sum()
                class_loss, kd_loss, feature_sum = self._loss_step(batch)
                if self._on_policy is not None:  # no CE on generated tokens unless asked
                    class_loss = self._on_policy.class_loss(class_loss)
                # token-weighted: the step's gradient is the mean over all its tokens
                current_loss = (1 - self._kd_ratio) * class_loss + self._kd_ratio * kd_loss
                objective = current_loss * current_num_tokens
                if feature_sum is not None:
                    objective = objective + self._features.objective(feature_sum)
                objective.backward()
                running_class_loss += class_loss.detach() * current_num_tokens
                running_kd_loss += kd_loss.detach() * current_num_tokens
                num_tokens += current_num_tokens

                if (idx + 1) % self._gradient_accumulation_steps == 0:
                    num_tokens, running_class_loss, running_kd_loss = self._reduce_step_stats(
                        num_tokens, running_class_loss, running_kd_loss
                    )
                    denom = max(int(num_tokens), 1)
                    training.scale_grads(self._model, torch.tensor(self._grad_scale_numerator / denom))
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        [p for p in self._model.parameters() if p.requires_grad],
                        max_norm=float(self._clip_grad_norm) if self._clip_grad_norm is not None else float("inf"),
                    )
                    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                        grad_norm = grad_norm.full_tensor()
                    class_loss_to_log = float(running_class_loss) / denom
                    kd_loss_to_log = float(running_kd_loss) / denom
                    loss_to_log = (1 - self._kd_ratio) * class_loss_to_log + self._kd_ratio * kd_loss_to_log
                    # checked before the optimizer sees the step (raises after too many)
                    skipped = self._nonfinite.skip(self.global_step + 1, loss_to_log, grad_norm)
                    if not skipped:
                        self._optimizer.step()
                    self._optimizer.zero_grad(set_to_none=True)
                    self._lr_scheduler.step()  # a skipped step still consumed its data and schedule slot
                    self.global_step += 1
                    if self._features is not None:  # the projections' step, and the term's mean
                        feature_loss_to_log = self._features.step(denom, self._clip_grad_norm, apply=not skipped)
                        loss_to_log += self._features.config.weight * feature_loss_to_log
                    if self._is_rank_zero:
                        pbar.update(1)
                        pbar.set_description(f"{curr_epoch + 1}|{self.global_step}|Loss: {loss_to_log:.4f}")

                    if self._is_rank_zero and self.global_step % self._log_every_n_steps == 0:
                        time_per_step = time.perf_counter() - t0
                        log_dict = {
                            "loss": loss_to_log,
                            "class_loss": class_loss_to_log,
                            "kd_loss": kd_loss_to_log,
                            "lr": self._optimizer.param_groups[0]["lr"],
                            "grad_norm": grad_norm,
                            "tokens_per_second": int(num_tokens) / time_per_step,
                            "epoch": curr_epoch,
                            "skipped_steps": self._nonfinite.skipped,
                        }
                        if self._features is not None:
                            log_dict["feature_loss"] = feature_loss_to_log
                        if self._schedules.scheduled:
                            log_dict.update(scheduled)
                        if self._on_policy is not None:
                            log_dict.update(self._on_policy.metrics())
                        if self._log_peak_memory_stats:
                            log_dict["peak_memory_gib"] = peak_memory_gib(self._device)
                        self._metric_logger.log_dict(log_dict, step=self.global_step)
                    running_class_loss, running_kd_loss, num_tokens = 0.0, 0.0, 0

                    last_step = (idx + 1) // self._gradient_accumulation_steps == self._steps_per_epoch
                    if last_step:
                        self.epochs_run += 1
                    if self._save_every_n_steps and self.global_step % self._save_every_n_steps == 0:
                        self.save_checkpoint(f"step_{self.global_step}", with_recipe_state=True)
                    t0 = time.perf_counter()  # after the save: its time is no step's
                    if last_step:
                        break
            pbar.close()
            steps_done_this_epoch = 0
        self.save_checkpoint("final", with_recipe_state=False)

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
