"""``python -m jsd_loss.prepare student``: a student pruned from the teacher.

The default is the method measured best for the ~90M SmolLM2 student (README, "Student
initialisation"); every other method of :mod:`jsd_loss.pruning` is one flag away.
"""

import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from safetensors.torch import save_file

from jsd_loss.checkpointing import atomic_directory, check_llama_dims, load_state_dict, read_config, write_model_dir
from jsd_loss.datasets import DEFAULT_DOLLY_PATH, DollySFTDataset, load_rows, split_rows
from jsd_loss.models.smollm2 import SmolLM2Tokenizer, smollm2_from_hf_state
from jsd_loss.prepare._manifest import refuse_foreign_output, verified_manifest, write_manifest
from jsd_loss.pruning import (
    PruningPlan,
    collect_activation_stats,
    count_parameters,
    even_layer_selection,
    keep_layers,
    prune,
    sample_calibration_rows,
    solve_shape,
)

log = logging.getLogger(__name__)

PRUNING_FILE = "pruning.json"
SCORES_FILE = "pruning_scores.safetensors"
# 17 of SmolLM2-135M's 30 layers at full width: the size of the original study's student
DEFAULT_TARGET_PARAMS = 88_493_760
# measured best for that size (README, "Student initialisation")
DEFAULT_PLAN = PruningPlan(method="width", target_params=DEFAULT_TARGET_PARAMS, refit_mlp=True)
default_layer_selection = even_layer_selection  # the old name


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


def calibration_samples(
    tokenizer_path: Path, vocab_size: int, source: str, plan: PruningPlan
) -> List[List[int]]:
    """Token lists of ``plan.calibration_rows`` seeded rows of the train split (never eval)."""
    tokenizer = SmolLM2Tokenizer(str(tokenizer_path), max_seq_len=plan.calibration_max_seq_len)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer mismatch: {tokenizer.path} has {tokenizer.vocab_size} tokens but the teacher's "
            f"vocabulary holds {vocab_size}"
        )
    rows = sample_calibration_rows(split_rows(load_rows(source), "train"), plan.calibration_rows, plan.seed)
    dataset = DollySFTDataset(rows, tokenizer, train_on_input=True)
    return [list(dataset[i]["tokens"]) for i in range(len(dataset))]


def prepare_student(
    teacher_dir: Path,
    output_dir: Path,
    plan: Optional[PruningPlan] = None,
    layers: Optional[Sequence[int]] = None,
    overwrite: bool = False,
    calibration_source: str = DEFAULT_DOLLY_PATH,
    tokenizer_path: Optional[Path] = None,
) -> Path:
    """Write a pruned student of ``teacher_dir`` into ``output_dir`` (HF directory with
    ``pruning.json``: method, shape, kept teacher units; ``pruning_scores.safetensors``).

    Args:
        teacher_dir (Path): HF directory of the teacher.
        output_dir (Path): where the student goes (written atomically).
        plan (Optional[PruningPlan]): method and shape; default :data:`DEFAULT_PLAN`.
        layers (Optional[Sequence[int]]): an explicit list of teacher layers to keep instead.
        overwrite (bool): replace a non-matching ``output_dir``.
        calibration_source (str): Dolly JSONL whose train split calibrates the scores.
        tokenizer_path (Optional[Path]): tokenizer for calibration; default the teacher's.

    Returns:
        Path: ``output_dir``.
    """
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    plan = plan or DEFAULT_PLAN
    config = read_config(teacher_dir)
    n_teacher = int(config["num_hidden_layers"])
    if layers is not None:
        layers = check_layer_selection(layers, n_teacher, plan.num_layers)
        plan = PruningPlan(method="layers", num_layers=len(layers))
    else:
        solve_shape(plan, config)  # every shape error before any file is read
    teacher_manifest = verified_manifest(teacher_dir) or {}
    source = {"kind": "student", "teacher_dir": str(teacher_dir.resolve()), "plan": plan.as_dict(),
              "layers": list(layers) if layers is not None else None,
              "calibration_source": str(Path(calibration_source).resolve()) if plan.method not in ("even", "layers") else None,
              "teacher_source_sha256": teacher_manifest.get("source_sha256")}
    if verified_manifest(output_dir, **source):
        log.info("%s already holds this student; nothing to do", output_dir)
        return output_dir
    refuse_foreign_output(output_dir, overwrite)

    teacher = load_state_dict(teacher_dir)
    check_llama_dims(config, teacher, str(teacher_dir))
    if layers is not None:
        student_config = {**config, "num_hidden_layers": len(layers)}
        student = keep_layers(teacher, layers)
        record, scores = {"teacher_layers": list(layers), "stages": [{"kind": "depth", "kept_layers": list(layers)}]}, {}
    else:
        samples = []
        if plan.method != "even":
            samples = calibration_samples(tokenizer_path or teacher_dir / "tokenizer.json",
                                          int(config["vocab_size"]), calibration_source, plan)

        def stats_fn(cfg, state, with_gram):
            model = smollm2_from_hf_state(cfg, state, max_seq_len=plan.calibration_max_seq_len)
            return collect_activation_stats(model, samples, pad_id=0, with_gram=with_gram, progress=True)

        student_config, student, record, scores = prune(config, teacher, plan, stats_fn)
        record = record.as_dict()
    n_params = count_parameters(student_config)
    pruning = {"plan": plan.as_dict(), "parameters": n_params, "teacher_parameters": count_parameters(config),
               **record}
    with atomic_directory(output_dir, overwrite=True) as tmp:
        write_model_dir(tmp, student, student_config, copy_from=teacher_dir)
        (tmp / PRUNING_FILE).write_text(json.dumps(pruning) + "\n")
        if scores:
            save_file({k: v.contiguous() for k, v in scores.items()}, str(tmp / SCORES_FILE))
        write_manifest(tmp, {**source, "parameters": n_params})
    log.info("wrote a %s student (%s parameters; %d layers, MLP %d, %d heads, hidden %d) to %s", plan.method,
             f"{n_params:,}", student_config["num_hidden_layers"], student_config["intermediate_size"],
             student_config["num_attention_heads"], student_config["hidden_size"], output_dir)
    return output_dir
