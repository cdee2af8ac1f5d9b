"""``python -m jsd_loss.prepare student``: a layer-pruned student initialised from the teacher."""

import logging
import re
from pathlib import Path
from typing import List, Optional, Sequence

from jsd_loss.checkpointing import (
    atomic_directory,
    check_llama_dims,
    load_state_dict,
    read_config,
    write_model_dir,
)
from jsd_loss.prepare._manifest import refuse_foreign_output, verified_manifest, write_manifest

log = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def default_layer_selection(num_teacher_layers: int, num_layers: int) -> List[int]:
    """Evenly spaced teacher layers, always keeping the first and the last.

    The first layer reads the raw embeddings and the last one writes what the final norm
    and the tied head decode, so both are kept; the layers in between are spread evenly so
    the student's residual stream still goes through every stage of the teacher's, the
    every-other-layer idea of DistilBERT generalised to any ratio. For 17 of 30:
    0, 2, 4, 5, 7, 9, 11, 13, 14, 16, 18, 20, 22, 24, 25, 27, 29.
    """
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"--num-layers must be in [1, {num_teacher_layers}], got {num_layers}")
    if num_layers == 1:
        return [num_teacher_layers - 1]
    step = (num_teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def check_layer_selection(layers: Sequence[int], num_teacher_layers: int, num_layers: Optional[int]) -> List[int]:
    layers = list(layers)
    bad = [i for i in layers if not 0 <= i < num_teacher_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the teacher has layers 0..{num_teacher_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer list {layers} repeats a layer")
    if layers != sorted(layers):
        raise ValueError(f"layer list {layers} must be increasing (the student keeps the teacher's order)")
    if num_layers is not None and num_layers != len(layers):
        raise ValueError(f"--num-layers {num_layers} disagrees with the {len(layers)} layers listed")
    if not layers:
        raise ValueError("the student needs at least one layer")
    return layers


def prepare_student(
    teacher_dir: Path,
    output_dir: Path,
    num_layers: Optional[int] = None,
    layers: Optional[Sequence[int]] = None,
    overwrite: bool = False,
) -> Path:
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    config = read_config(teacher_dir)
    n_teacher = int(config["num_hidden_layers"])
    if layers is None:
        if num_layers is None:
            raise ValueError("give --num-layers or --layers")
        layers = default_layer_selection(n_teacher, num_layers)
    layers = check_layer_selection(layers, n_teacher, num_layers)
    teacher_manifest = verified_manifest(teacher_dir) or {}
    source = {"kind": "student", "teacher_dir": str(teacher_dir.resolve()), "layers": layers,
              "teacher_source_sha256": teacher_manifest.get("source_sha256")}
    if verified_manifest(output_dir, **source):
        log.info("%s already holds this student; nothing to do", output_dir)
        return output_dir
    refuse_foreign_output(output_dir, overwrite)

    teacher = load_state_dict(teacher_dir)
    check_llama_dims(config, teacher, str(teacher_dir))
    student = {}
    for key, value in teacher.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            student[key] = value
        elif int(m.group(1)) in layers:
            student[f"model.layers.{layers.index(int(m.group(1)))}.{m.group(2)}"] = value

    with atomic_directory(output_dir, overwrite=True) as tmp:
        write_model_dir(tmp, student, {**config, "num_hidden_layers": len(layers)}, copy_from=teacher_dir)
        write_manifest(tmp, source)
    log.info("wrote a %d-layer student (teacher layers %s) to %s", len(layers), layers, output_dir)
    return output_dir
