"""What a ``feature_distillation`` config block asks for, checked before anything is built:
the loss, the targets, the projection, and which student layer learns from which teacher
layer (``layer_map``: ``auto`` from the student's pruning manifest, or explicit pairs), with
the teacher channels a width-pruned student kept."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from jsd_loss.losses import FEATURE_LOSSES
from jsd_loss.prepare import PRUNING_FILE

# the residual stream after the block; the attention and MLP outputs added into it
TARGETS = ("residual", "attention", "mlp")
PROJECTIONS = ("none", "linear", "low_rank")
_KEYS = ("weight", "loss", "layer_map", "targets", "projection")
Pair = Tuple[int, int]


@dataclass(frozen=True)
class FeatureConfig:
    """A ``feature_distillation`` block, its values checked (the layer indices are checked
    against the models by :func:`feature_map`)."""

    weight: float
    loss: str = "mse"
    layer_map: Union[str, Tuple[Pair, ...]] = "auto"
    targets: Tuple[str, ...] = ("residual",)
    projection: str = "none"
    rank: Optional[int] = None  # of a low_rank projection


@dataclass(frozen=True)
class FeatureMap:
    """(student layer, teacher layer) pairs and the residual widths; ``teacher_channels``:
    the teacher channels the student's channels are, in order (None when the widths agree
    or the manifest does not say)."""

    pairs: Tuple[Pair, ...]
    student_width: int
    teacher_width: int
    teacher_channels: Optional[Tuple[int, ...]] = None


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _projection(value: Any) -> Tuple[str, Optional[int]]:
    if value is None or value in ("none", "linear"):
        return value or "none", None
    if isinstance(value, dict) and list(value) == ["low_rank"]:
        rank = value["low_rank"]
        if _is_index(rank) and rank > 0:
            return "low_rank", rank
    raise ValueError(f"feature_distillation.projection must be none, linear or {{low_rank: r}} with r a "
                     f"positive int, got {value!r}")


def _layer_map(value: Any) -> Union[str, Tuple[Pair, ...]]:
    if value == "auto":
        return value
    ok = isinstance(value, list) and value and all(
        isinstance(p, list) and len(p) == 2 and all(_is_index(i) for i in p) for p in value)
    if not ok:
        raise ValueError("feature_distillation.layer_map must be auto or a non-empty list of [student_layer, "
                         f"teacher_layer] pairs of non-negative ints, got {value!r}")
    pairs = tuple((s, t) for s, t in value)
    if len(set(pairs)) < len(pairs):
        raise ValueError(f"feature_distillation.layer_map lists a pair twice: {value}")
    return pairs


def feature_config(cfg: DictConfig) -> Optional[FeatureConfig]:
    """
    The run's :class:`FeatureConfig`, or None when feature distillation is off (no block,
    or ``weight: 0``; a block that is off is still checked).

    Raises:
        ValueError: naming the key, for unknown keys and bad values, and for ``weight > 0``
            with a ``teacher_cache`` (it holds the teacher's top-k distributions, not its
            hidden states).
    """
    block = cfg.get("feature_distillation", None)
    if block is None:
        return None
    block = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else block
    if not isinstance(block, dict):
        raise ValueError(f"feature_distillation must be a mapping of {', '.join(_KEYS)}, got {block!r}")
    unknown = sorted(set(block) - set(_KEYS))
    if unknown:
        raise ValueError(f"feature_distillation has unknown keys {unknown}; it takes {', '.join(_KEYS)}")
    weight = block.get("weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"feature_distillation.weight must be a finite number >= 0 (0: off), got {weight!r}")
    loss = block.get("loss", "mse")
    if loss not in FEATURE_LOSSES:
        raise ValueError(f"feature_distillation.loss must be one of {', '.join(FEATURE_LOSSES)}, got {loss!r}")
    targets = block.get("targets", ["residual"])
    if not isinstance(targets, list) or not targets or any(t not in TARGETS for t in targets) \
            or len(set(targets)) < len(targets):
        raise ValueError(f"feature_distillation.targets must be a non-empty list of distinct "
                         f"{', '.join(TARGETS)}, got {targets!r}")
    projection, rank = _projection(block.get("projection", "none"))
    layer_map = _layer_map(block.get("layer_map", "auto"))
    if weight == 0:
        return None
    if cfg.get("teacher_cache", None):
        raise ValueError(
            f"feature_distillation.weight={weight} needs the teacher's hidden states, but teacher_cache="
            f"{cfg.teacher_cache} holds only its top-k output distributions: remove teacher_cache to run the "
            "teacher live, or set feature_distillation.weight: 0"
        )
    return FeatureConfig(float(weight), loss, layer_map, tuple(targets), projection, rank)


def read_pruning_manifest(student_dir: Path) -> Optional[dict]:
    """The student's pruning manifest (``pruning.json``, written by ``python -m jsd_loss.prepare
    student``), or None when it has none."""
    path = Path(student_dir) / PRUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _checked_channels(manifest: Optional[dict], student_width: int, teacher_width: int) -> Optional[Tuple[int, ...]]:
    channels = (manifest or {}).get("hidden_channels")
    if channels is None or len(channels) != student_width:
        return None
    if not all(_is_index(c) and c < teacher_width for c in channels) or len(set(channels)) < len(channels):
        raise ValueError(f"the pruning manifest's hidden_channels are not {student_width} distinct teacher "
                         f"channels in [0, {teacher_width})")
    return tuple(channels)


def feature_map(
    config: FeatureConfig,
    student_hf_config: dict,
    teacher_hf_config: dict,
    student_dir: Path,
) -> FeatureMap:
    """
    The layer pairs and channels of ``config`` for this student and teacher, from their
    ``config.json`` (no model needed).

    ``auto`` pairs student layer ``i`` with teacher layer ``teacher_layers[i]`` of the
    student's ``pruning.json``. Where the student's residual stream is narrower, projection
    ``none`` compares it with the teacher's channels listed in the manifest's
    ``hidden_channels`` (exactly the channels pruning kept; no parameters).

    Raises:
        ValueError: for ``auto`` without a manifest or with one of another student, a layer
            index out of range, or different widths with projection ``none`` and no manifest
            channels for them.
    """
    n_student, n_teacher = int(student_hf_config["num_hidden_layers"]), int(teacher_hf_config["num_hidden_layers"])
    d_student, d_teacher = int(student_hf_config["hidden_size"]), int(teacher_hf_config["hidden_size"])
    manifest = read_pruning_manifest(student_dir)
    if config.layer_map == "auto":
        if manifest is None or "teacher_layers" not in manifest:
            raise ValueError(
                f"feature_distillation.layer_map: auto reads the student's pruning manifest, but "
                f"{Path(student_dir) / PRUNING_FILE} does not exist (or lists no teacher_layers); "
                "give explicit [[student_layer, teacher_layer], ...] pairs"
            )
        kept = manifest["teacher_layers"]
        if len(kept) != n_student:
            raise ValueError(f"{Path(student_dir) / PRUNING_FILE} lists {len(kept)} teacher_layers but the student "
                             f"has {n_student} layers: it is the manifest of another student")
        pairs: List[Pair] = list(enumerate(kept))
    else:
        pairs = list(config.layer_map)
    for s, t in pairs:
        if not (_is_index(s) and s < n_student and _is_index(t) and t < n_teacher):
            raise ValueError(f"feature_distillation.layer_map pair [{s}, {t}] is out of range: the student has "
                             f"layers 0..{n_student - 1}, the teacher 0..{n_teacher - 1}")
    channels = None
    if d_student != d_teacher:
        channels = _checked_channels(manifest, d_student, d_teacher)
        if channels is None and config.projection == "none":
            raise ValueError(
                f"feature_distillation: the student's hidden width is {d_student} and the teacher's {d_teacher}, and "
                f"projection: none needs the {d_student} teacher channels the student kept ({PRUNING_FILE}'s "
                f"hidden_channels in {student_dir}); set projection: linear or {{low_rank: r}} to learn a map"
            )
    return FeatureMap(tuple(pairs), d_student, d_teacher, channels)
