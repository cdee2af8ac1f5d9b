"""Structured pruning of a teacher into a student: calibration statistics, importance
scores (Minitron width, block influence, angular distance), state-dict surgery, and the
plan that ties a method and a size target to a student shape."""

from jsd_loss.pruning._calibration import (
    ActivationStats,
    collect_activation_stats,
    length_sorted_batches,
    sample_calibration_rows,
)
from jsd_loss.pruning._importance import (
    AGGREGATIONS,
    angular_distance,
    block_influence,
    channel_scores,
    head_scores,
    layers_by_angular_distance,
    layers_by_block_influence,
    neuron_scores,
    refit_down_projection,
    top_indices,
)
from jsd_loss.pruning._plan import METHODS, PruningPlan, StudentShape, parse_size, solve_shape
from jsd_loss.pruning._prune import PruningRecord, even_layer_selection, prune
from jsd_loss.pruning._surgery import (
    count_parameters,
    keep_attention_heads,
    keep_hidden_channels,
    keep_layers,
    keep_mlp_neurons,
    kept_heads_per_group,
    pruned_config,
)

__all__ = [
    "AGGREGATIONS",
    "METHODS",
    "ActivationStats",
    "PruningPlan",
    "PruningRecord",
    "StudentShape",
    "angular_distance",
    "block_influence",
    "channel_scores",
    "collect_activation_stats",
    "count_parameters",
    "even_layer_selection",
    "head_scores",
    "keep_attention_heads",
    "keep_hidden_channels",
    "keep_layers",
    "keep_mlp_neurons",
    "kept_heads_per_group",
    "layers_by_angular_distance",
    "layers_by_block_influence",
    "length_sorted_batches",
    "neuron_scores",
    "parse_size",
    "prune",
    "pruned_config",
    "refit_down_projection",
    "sample_calibration_rows",
    "solve_shape",
    "top_indices",
]
