"""Run a :class:`PruningPlan`: score on calibration samples, select, cut, repeat."""

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

from jsd_loss.pruning._calibration import ActivationStats
from jsd_loss.pruning._importance import (
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
from jsd_loss.pruning._plan import METHODS, PruningPlan, StudentShape, solve_shape
from jsd_loss.pruning._surgery import (
    keep_attention_heads,
    keep_hidden_channels,
    keep_layers,
    keep_mlp_neurons,
    kept_heads_per_group,
)

log = logging.getLogger(__name__)
Tensor = torch.Tensor
# (HF config, HF state dict) -> activation statistics of that model on the calibration samples
StatsFn = Callable[[dict, Dict[str, Tensor], bool], ActivationStats]


@dataclass
class PruningRecord:
    """Which teacher units each student unit is, in the teacher's indices."""

    teacher_layers: List[int]
    mlp_neurons: List[List[int]]  # per student layer
    attention_heads: List[List[int]]
    kv_heads: List[List[int]]
    hidden_channels: List[int]
    stages: List[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def even_layer_selection(num_teacher_layers: int, num_layers: int) -> List[int]:
    """Evenly spaced teacher layers, always keeping the first and the last.

    For 17 of 30: 0, 2, 4, 5, 7, 9, 11, 13, 14, 16, 18, 20, 22, 24, 25, 27, 29.
    """
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"--num-layers must be in [1, {num_teacher_layers}], got {num_layers}")
    if num_layers == 1:
        return [num_teacher_layers - 1]
    step = (num_teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def teacher_scores(stats: ActivationStats, aggregation: str) -> Dict[str, Tensor]:
    """Every score of the teacher, for the record (``pruning_scores.safetensors``)."""
    return {
        "mlp_neurons": neuron_scores(stats, aggregation).float(),
        "attention_heads": head_scores(stats, aggregation).float(),
        "hidden_channels": channel_scores(stats, aggregation).float(),
        "block_influence": block_influence(stats).float(),
        "angular_distance": angular_distance(stats).float(),
    }


def prune(
    teacher_config: dict, teacher_state: Dict[str, Tensor], plan: PruningPlan, stats_fn: StatsFn
):
    """Prune a HF Llama state dict by ``plan``.

    Returns:
        Tuple[dict, Dict[str, Tensor], PruningRecord, Dict[str, Tensor]]: the student's HF
        config and state dict, the record of kept teacher units, and the teacher's scores
        (empty for ``even``, which scores nothing).
    """
    shape = solve_shape(plan, teacher_config)
    config, state = dict(teacher_config), dict(teacher_state)
    n, f = int(config["num_hidden_layers"]), int(config["intermediate_size"])
    h, kv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    record = PruningRecord(list(range(n)), [list(range(f))] * n, [list(range(h))] * n,
                           [list(range(kv))] * n, list(range(int(config["hidden_size"]))))
    scores: Dict[str, Tensor] = {}

    def stats_of(current_config, current_state, with_gram=False):
        stats = stats_fn(current_config, current_state, with_gram)
        if not scores:
            scores.update(teacher_scores(stats, plan.aggregation))
        return stats

    depth, width = METHODS[plan.method]
    if depth and shape.num_layers < n:
        if plan.method == "even":
            layers = even_layer_selection(n, shape.num_layers)
        else:
            stats = stats_of(config, state)
            select = layers_by_angular_distance if "angular" in plan.method else layers_by_block_influence
            layers = select(stats, shape.num_layers)
        state = keep_layers(state, layers)
        config = {**config, "num_hidden_layers": len(layers)}
        record = PruningRecord(layers, [record.mlp_neurons[i] for i in layers],
                               [record.attention_heads[i] for i in layers], [record.kv_heads[i] for i in layers],
                               record.hidden_channels, record.stages)
        record.stages.append({"kind": "depth", "kept_layers": layers})
    if width:
        for step in range(1, plan.iterations + 1):
            ffn = f - round((f - shape.intermediate_size) * step / plan.iterations)
            last = step == plan.iterations
            stage_shape = StudentShape(shape.num_layers, ffn, shape.num_heads if last else int(config["num_attention_heads"]),
                                       shape.num_kv_heads, shape.hidden_size if last else int(config["hidden_size"]))
            stats = stats_of(config, state, plan.refit_mlp)
            config, state, record = _width_stage(config, state, record, stats, stage_shape, plan)
    log.info("pruned to %d layers, MLP %d, %d heads, hidden %d", shape.num_layers,
             shape.intermediate_size, shape.num_heads, shape.hidden_size)
    return shape.hf_config(teacher_config), state, record, scores


def _width_stage(config, state, record: PruningRecord, stats: ActivationStats, shape: StudentShape,
                 plan: PruningPlan):
    n = int(config["num_hidden_layers"])
    heads, kv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    neurons_all, heads_all = neuron_scores(stats, plan.aggregation), head_scores(stats, plan.aggregation)
    mlp_neurons, attention_heads = [], []
    for layer in range(n):
        keep = top_indices(neurons_all[layer], shape.intermediate_size)
        if plan.refit_mlp:
            key = f"model.layers.{layer}.mlp.down_proj.weight"
            refit = refit_down_projection(state[key], stats.mlp_gram[layer], keep)
        state = keep_mlp_neurons(state, layer, keep)
        if plan.refit_mlp:
            state[key] = refit
        mlp_neurons.append([record.mlp_neurons[layer][i] for i in keep.tolist()])
        q_heads = kept_heads_per_group(heads, kv, heads_all[layer], shape.num_heads // kv)
        if len(q_heads) < heads:
            state = keep_attention_heads(state, layer, q_heads, list(range(kv)), head_dim)
        attention_heads.append([record.attention_heads[layer][i] for i in q_heads])
    channels = top_indices(channel_scores(stats, plan.aggregation), shape.hidden_size)
    if len(channels) < int(config["hidden_size"]):
        state = keep_hidden_channels(state, channels)
    hidden = [record.hidden_channels[i] for i in channels.tolist()]
    config = {**config, "intermediate_size": shape.intermediate_size, "num_attention_heads": shape.num_heads,
              "hidden_size": shape.hidden_size, "head_dim": head_dim}
    stage = {"kind": "width", "intermediate_size": shape.intermediate_size, "num_heads": shape.num_heads,
             "hidden_size": shape.hidden_size, "calibration_tokens": stats.num_tokens}
    return config, state, PruningRecord(record.teacher_layers, mlp_neurons, attention_heads, record.kv_heads, hidden,
                                        record.stages + [stage])
