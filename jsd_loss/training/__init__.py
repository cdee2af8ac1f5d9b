"""What the recipes share: model and adapter setup, model shapes against checkpoints, input
and config-key checks, precision, data loading, the KD step, feature distillation, on-policy
(generated) batches, run directories and checkpoints, saving by model family, peak memory,
metric logging."""

from jsd_loss.training._checkpoint import (
    DEFAULT_KEEP_LAST_N,
    RECIPE_STATE,
    checked_keep_last_n,
    earlier_run,
    latest_checkpoint,
    merged_hf_state_dict,
    prune_checkpoints,
    read_recipe_state,
    refuse_earlier_run,
    write_checkpoint,
)
from jsd_loss.training._config_keys import NOT_IMPLEMENTED, SHARDING_ONLY, refuse_unimplemented
from jsd_loss.training._data import build_dataloader, steps_per_epoch
from jsd_loss.training._families import LLAMA_LAYOUT, hf_converter
from jsd_loss.training._feature_map import (
    TARGETS,
    FeatureConfig,
    FeatureMap,
    feature_config,
    feature_map,
    read_pruning_manifest,
)
from jsd_loss.training._features import (
    FEATURE_STATE,
    FeatureDistiller,
    capture_features,
    setup_feature_distillation,
)
from jsd_loss.training._inputs import check_checkpoint_files, check_checkpoints, check_models_agree
from jsd_loss.training._kd_step import KDLosses, hidden_state_output, kd_step, output_weight, setup_losses
from jsd_loss.training._memory import keep_freed_cpu_memory, peak_memory_gib, reset_peak_memory
from jsd_loss.training._metric_logger import JSONLMetricLogger, read_metrics
from jsd_loss.training._models import (
    LoRA,
    build_model,
    checked_meta_model,
    init_adapters,
    load_in_place,
    num_trainable,
    setup_student,
    setup_teacher,
)
from jsd_loss.training._on_policy import (
    ON_POLICY_STATE,
    OnPolicy,
    batch_prompts,
    generated_batch,
    setup_on_policy,
)
from jsd_loss.training._on_policy_config import OnPolicyConfig, check_prompts, on_policy_config, prompt_length
from jsd_loss.training._nonfinite import DEFAULT_MAX_SKIPPED_STEPS, NonFiniteSteps, loss_labels
from jsd_loss.training._precision import Precision, precision_from_config
from jsd_loss.training._resume import RNG_KEY, RUN_KEY, check_resume, rng_state, run_identity, set_rng_state
from jsd_loss.training._schedules import (
    ConstantSchedule,
    CosineSchedule,
    KDSchedules,
    LinearSchedule,
    Schedule,
    as_schedule,
)
from jsd_loss.training._teacher_cache import (
    batch_teacher,
    cache_identity,
    kd_temperature,
    manifest_for,
    open_teacher_cache,
    run_rows,
    unpacked,
)
from jsd_loss.training._shapes import SHAPE_KEYS, check_model_shape, hf_config_shape, model_shape

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "KDSchedules",
    "LinearSchedule",
    "Schedule",
    "as_schedule",
    "DEFAULT_KEEP_LAST_N",
    "DEFAULT_MAX_SKIPPED_STEPS",
    "FEATURE_STATE",
    "FeatureConfig",
    "FeatureDistiller",
    "FeatureMap",
    "JSONLMetricLogger",
    "KDLosses",
    "LLAMA_LAYOUT",
    "LoRA",
    "NOT_IMPLEMENTED",
    "NonFiniteSteps",
    "ON_POLICY_STATE",
    "OnPolicy",
    "OnPolicyConfig",
    "Precision",
    "RECIPE_STATE",
    "RNG_KEY",
    "RUN_KEY",
    "SHAPE_KEYS",
    "SHARDING_ONLY",
    "TARGETS",
    "batch_prompts",
    "batch_teacher",
    "build_dataloader",
    "cache_identity",
    "build_model",
    "capture_features",
    "check_checkpoint_files",
    "check_checkpoints",
    "check_model_shape",
    "check_resume",
    "checked_keep_last_n",
    "checked_meta_model",
    "check_models_agree",
    "check_prompts",
    "earlier_run",
    "feature_config",
    "feature_map",
    "generated_batch",
    "hf_config_shape",
    "hf_converter",
    "hidden_state_output",
    "init_adapters",
    "kd_temperature",
    "kd_step",
    "keep_freed_cpu_memory",
    "latest_checkpoint",
    "load_in_place",
    "loss_labels",
    "manifest_for",
    "merged_hf_state_dict",
    "model_shape",
    "num_trainable",
    "on_policy_config",
    "open_teacher_cache",
    "output_weight",
    "peak_memory_gib",
    "precision_from_config",
    "prompt_length",
    "prune_checkpoints",
    "read_metrics",
    "read_pruning_manifest",
    "read_recipe_state",
    "refuse_earlier_run",
    "refuse_unimplemented",
    "reset_peak_memory",
    "rng_state",
    "run_identity",
    "run_rows",
    "setup_feature_distillation",
    "setup_losses",
    "setup_on_policy",
    "setup_student",
    "set_rng_state",
    "setup_teacher",
    "steps_per_epoch",
    "unpacked",
    "write_checkpoint",
]
