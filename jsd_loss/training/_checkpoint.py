"""Run directories of the distillation recipes: what an earlier run left there, the latest
step checkpoint to resume from, and checkpoints written as HF model directories (LoRA
merged), atomically, with the recipe state beside the weights of a step checkpoint."""

import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from torchtune import training
from torchtune.modules.peft import get_merged_lora_ckpt

from jsd_loss.checkpointing import ChecksumError, atomic_directory, verify_directory, write_checksums, write_model_dir
from jsd_loss.training._models import LoRA

RECIPE_STATE = "recipe_state.pt"
DEFAULT_KEEP_LAST_N = 2  # step checkpoints kept (``keep_last_n_checkpoints``); final is never pruned

StateDict = Dict[str, torch.Tensor]


def earlier_run(output_dir: Path) -> List[str]:
    """Names of the checkpoints (``final``, ``step_N``) a run left in ``output_dir``."""
    return sorted(p.name for p in Path(output_dir).glob("*") if p.name == "final" or p.name.startswith("step_"))


def refuse_earlier_run(output_dir: Path, resume: bool, overwrite: bool) -> List[str]:
    """The earlier run that this one replaces (empty when none, or when resuming it).

    Raises:
        FileExistsError: if ``output_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    previous = earlier_run(output_dir)
    if not previous or resume:
        return []
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a run ({', '.join(previous)}); set "
            "resume_from_checkpoint=True to continue it, overwrite_output=True to replace it, "
            "or choose another output_dir"
        )
    return previous


def read_recipe_state(path: Path) -> Dict[str, Any]:
    """A ``recipe_state.pt`` read with ``weights_only=True``: tensors and plain containers only,
    so a planted pickle is refused without any of its code running.

    Raises:
        ValueError: naming ``path``, if it holds anything else (a class, a function: code that
            unpickling would run) or is not a readable torch file (truncated, corrupted).
    """
    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(e))
        raise ValueError(
            f"refusing to resume from {path}: it holds "
            f"{'the global ' + found.group(1) if found else 'objects'} besides tensors and plain "
            "containers, which a checkpoint of this recipe never does; it is never unpickled "
            "(unpickling could run code). Resume only from checkpoints this recipe wrote."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"cannot resume from {path}: not a readable torch file (truncated or corrupted?): {e}") from e


def latest_checkpoint(output_dir: Path, seed: int) -> Tuple[Path, Dict[str, Any]]:
    """The newest ``step_N`` checkpoint in ``output_dir`` and its recipe state (tensors and
    plain containers only: see :func:`read_recipe_state`).

    Raises:
        FileNotFoundError: if there is none.
        ValueError: if its recipe state holds code or is unreadable, or a file differs from
            its recorded checksum (naming the file).
        ValueError: if it was trained with another seed (the data order would differ).
    """
    steps = sorted(
        (_step(p), p) for p in Path(output_dir).glob("step_*") if _step(p) is not None and (p / RECIPE_STATE).is_file()
    )
    if not steps:
        raise FileNotFoundError(
            f"resume_from_checkpoint=True but {output_dir} has no step_N checkpoint with {RECIPE_STATE}"
        )
    path = steps[-1][1]
    try:
        verify_directory(path)  # weights and recipe state, when the checkpoint has checksums
    except ChecksumError as e:
        raise ChecksumError(f"cannot resume from {path}: {e}; remove {path} to resume from the one before it") from None
    state = read_recipe_state(path / RECIPE_STATE)
    if state[training.SEED_KEY] != seed:
        raise ValueError(f"checkpoint {path} was trained with seed {state[training.SEED_KEY]}, config has {seed}")
    return path, state


def checked_keep_last_n(value: Optional[int]) -> Optional[int]:
    """``keep_last_n_checkpoints`` as given (None: keep every step checkpoint).

    Raises:
        ValueError: unless it is None or a positive integer.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"keep_last_n_checkpoints must be a positive integer or null (keep all), got {value!r}")
    return value


def _step(path: Path) -> Optional[int]:
    step = path.name[len("step_"):]
    return int(step) if path.name.startswith("step_") and step.isdigit() else None


def prune_checkpoints(output_dir: Path, keep: Optional[int]) -> List[str]:
    """Remove all but the newest ``keep`` ``step_N`` checkpoints of ``output_dir`` (all kept
    when ``keep`` is None; ``final`` is never touched), and the hidden temporaries that
    interrupted step checkpoint writes left (``.step_N.tmp-*``, incomplete by construction).
    Meant to be called right after a step checkpoint was written, by the only writer.

    Returns:
        List[str]: the names removed.
    """
    output_dir = Path(output_dir)
    steps = sorted((_step(p), p) for p in output_dir.glob("step_*") if _step(p) is not None and p.is_dir())
    doomed = [p for _, p in steps[: -keep]] if keep is not None else []
    doomed += sorted(output_dir.glob(".step_*.tmp-*"))
    for path in doomed:
        shutil.rmtree(path)
    return [p.name for p in doomed]


def merged_hf_state_dict(
    state_dict: StateDict, lora: Optional[LoRA], to_hf: Callable[[StateDict], StateDict]
) -> StateDict:
    """A torchtune state dict (on CPU) as HF weights: LoRA merged into copies of the base
    weights, then converted by the model family's ``to_hf``. ``state_dict`` is left as it
    was: on CPU its tensors are the live model's (torchtune's merge adds in place, which
    would fold the adapters into the frozen base of the model being trained)."""
    if lora is not None:
        merged = {k.rsplit(".lora_a.", 1)[0] + ".weight" for k in state_dict if ".lora_a." in k}
        state_dict = get_merged_lora_ckpt(
            {k: (v.clone() if k in merged else v) for k, v in state_dict.items()}, rank=lora.rank, alpha=lora.alpha
        )
    return to_hf(state_dict)


def write_checkpoint(
    target: Path,
    hf_state_dict: StateDict,
    hf_config: dict,
    copy_from: Path,
    recipe_state: Optional[Dict[str, Any]] = None,
) -> None:
    """Write ``target`` as a HF model directory (tokenizer files copied from ``copy_from``),
    with ``recipe_state.pt`` when given (both in ``checksums.json``); atomically, replacing an
    earlier ``target``.

    Raises:
        OSError: naming ``target``, if a write fails (a full disk): nothing of it is left
            behind and an earlier ``target`` and every other checkpoint are untouched.
    """
    try:
        with atomic_directory(target, overwrite=True) as tmp:
            write_model_dir(tmp, hf_state_dict, hf_config, copy_from=copy_from)
            if recipe_state is not None:
                torch.save(recipe_state, tmp / RECIPE_STATE)
                write_checksums(tmp, [RECIPE_STATE])
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save and safetensors wrap the OS error
        try:
            free = f"{shutil.disk_usage(Path(target).parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        message = (f"cannot write checkpoint {target} ({type(e).__name__}: {e}); nothing of it was kept, earlier "
                   f"checkpoints are untouched (is the disk full? {free})")
        raise (OSError(e.errno, message) if isinstance(e, OSError) and e.errno else OSError(message)) from e


def save_student(
    output_dir: Path, name: str, state_dict: StateDict, *, lora: Optional[LoRA],
    to_hf: Callable[[StateDict], StateDict], hf_config: dict, copy_from: Path,
    recipe_state: Optional[Dict[str, Any]] = None, keep_last_n: Optional[int] = None,
    log: Optional[logging.Logger] = None,
) -> Path:
    """
    Write the student as ``output_dir/<name>``: a HF model directory (LoRA merged, see
    :func:`merged_hf_state_dict`), atomically (see :func:`write_checkpoint`); a step
    checkpoint, with ``recipe_state``, then leaves only the newest ``keep_last_n`` step
    checkpoints (see :func:`prune_checkpoints`). Only one process may call it.

    Args:
        output_dir (Path): the run's directory.
        name (str): the checkpoint's name (``step_N``, ``final``).
        state_dict (StateDict): the student's full torchtune state dict, on CPU.
        lora (Optional[LoRA]): the student's adapters (None: full-parameter).
        to_hf (Callable[[StateDict], StateDict]): the model family's converter to HF names.
        hf_config (dict): the student's ``config.json``.
        copy_from (Path): where the tokenizer files are copied from.
        recipe_state (Optional[Dict[str, Any]]): what a resume needs. Default: None (a model only)
        keep_last_n (Optional[int]): step checkpoints kept. Default: None (all)
        log (Optional[logging.Logger]): where writes and removals are reported. Default: None

    Returns:
        Path: the directory written.
    """
    log = log or logging.getLogger(__name__)
    target = Path(output_dir) / name
    hf_state = merged_hf_state_dict(state_dict, lora, to_hf)
    write_checkpoint(target, hf_state, hf_config, copy_from, recipe_state)
    log.info(f"Saved {'checkpoint' if recipe_state is not None else 'model'} to {target}")
    if recipe_state is not None:  # only once the new one is complete
        for removed in prune_checkpoints(output_dir, keep_last_n):
            log.info(f"Removed {Path(output_dir) / removed} (keep_last_n_checkpoints={keep_last_n})")
    return target
