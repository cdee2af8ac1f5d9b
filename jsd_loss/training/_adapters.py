"""Exact resume of LoRA and DoRA students.

A step checkpoint's HF directory holds the merged weights (a standard model that loads
anywhere); merging cannot be undone, so the adapters (``lora_a``, ``lora_b`` and DoRA's
``magnitude``) go into its recipe state as plain tensors (read with ``weights_only=True``),
beside their optimizer state. A resumed LoRA/DoRA student is rebuilt from its frozen base
(the run's original student checkpoint) and those adapters, and the base is checked first:
merged with the saved adapters it must give the step checkpoint's weights, so a base
checkpoint replaced since the run started is refused instead of resumed silently wrong."""

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune.modules.peft import get_adapter_params, get_merged_lora_ckpt

from jsd_loss.training._models import checkpoint_weights

ADAPTER_KEY = "adapters"  # key of the recipe state: {state-dict name: tensor}

StateDict = Dict[str, torch.Tensor]


def adapter_identity(model: nn.Module, rank: Optional[int], alpha: Optional[float]) -> Optional[Dict[str, Any]]:
    """What a resume must keep of a student's adapters: every adapter parameter's shape
    (which modules, the rank, DoRA or not) and alpha; None for a full-parameter student.
    The meta device will do."""
    params = get_adapter_params(model)
    if not params:
        return None
    return {"shapes": {k: list(p.shape) for k, p in sorted(params.items())}, "rank": rank, "alpha": alpha}


def adapter_state(state_dict: StateDict, names) -> StateDict:
    """The adapter tensors (``names``) of a full CPU state dict, copied."""
    return {k: state_dict[k].detach().clone() for k in names}


def resume_weights(
    state: Dict[str, Any],
    identity: Optional[Dict[str, Any]],
    load: Callable[[Path], StateDict],
    step_dir: Path,
    base_dir: Path,
) -> Tuple[StateDict, Optional[StateDict]]:
    """The student weights to resume from and its adapters (None: a full-parameter student,
    whose step checkpoint holds its trained weights).

    Args:
        state (Dict[str, Any]): the step checkpoint's recipe state.
        identity (Optional[Dict[str, Any]]): :func:`adapter_identity` of the configured student.
        load (Callable[[Path], StateDict]): a checkpoint directory's weights, in the model's layout.
        step_dir (Path): the step checkpoint.
        base_dir (Path): the run's original student checkpoint (the frozen base).

    Raises:
        ValueError: if a LoRA/DoRA student's checkpoint holds no adapters (written before they
            were saved), the adapters do not fit the configured ones, or the base does not
            merge into the step checkpoint's weights.
    """
    adapters = state.get(ADAPTER_KEY)
    if identity is None and adapters is None:
        return load(step_dir), None
    if adapters is None:
        raise ValueError(
            f"cannot resume the LoRA/DoRA student exactly from {step_dir}: it holds the merged weights only (written "
            "before adapters were saved with the recipe state). Start a new run, or train a full-parameter student"
        )
    shapes = {k: list(v.shape) for k, v in sorted(adapters.items())}
    if identity is None or shapes != identity["shapes"]:
        raise ValueError(f"the adapters in {step_dir} do not fit the configured student's "
                         f"({'none' if identity is None else len(identity['shapes'])} adapter tensors, {len(shapes)} saved)")
    base = load(base_dir)
    check_base(base, adapters, load(step_dir), identity["rank"], identity["alpha"], base_dir, step_dir)
    return base, adapters


def student_weights(
    cfg_checkpointer: DictConfig, identity: Optional[Dict[str, Any]],
    resume: Optional[Tuple[Path, Dict[str, Any]]] = None,
) -> Tuple[StateDict, Optional[StateDict]]:
    """
    The student's weights to start from, read by the configured checkpointer, and its adapters
    (None: new or full-parameter): the original checkpoint's weights, or on resume those of
    :func:`resume_weights` (the step checkpoint's, or the frozen base and the saved adapters).

    Args:
        cfg_checkpointer (DictConfig): the student's checkpointer config.
        identity (Optional[Dict[str, Any]]): :func:`adapter_identity` of the configured student.
        resume (Optional[Tuple[Path, Dict[str, Any]]]): the step checkpoint resumed and its
            recipe state. Default: None (a new run)

    Returns:
        Tuple[StateDict, Optional[StateDict]]: the weights and the adapters.
    """
    def load(checkpoint_dir: Path) -> StateDict:
        cfg = DictConfig({**cfg_checkpointer, "checkpoint_dir": str(checkpoint_dir)})
        return checkpoint_weights(cfg)

    if resume is None:
        return load(cfg_checkpointer.checkpoint_dir), None
    step_dir, state = resume
    return resume_weights(state, identity, load, step_dir, Path(cfg_checkpointer.checkpoint_dir))


def check_base(base: StateDict, adapters: StateDict, merged: StateDict, rank: int, alpha: float,
               base_dir: Path, step_dir: Path) -> None:
    """Refuse a base that, merged with ``adapters``, does not give ``merged`` (to rounding).

    Raises:
        ValueError: naming both directories and the first weight that differs.
    """
    with torch.no_grad():
        lora_weights = {k.rsplit(".lora_a.", 1)[0] + ".weight" for k in adapters if ".lora_a." in k}
        ours = get_merged_lora_ckpt(
            {**{k: (v.clone() if k in lora_weights else v) for k, v in base.items()}, **adapters}, rank=rank, alpha=alpha
        )
        problem = None
        if ours.keys() != merged.keys():
            problem = f"other weights ({sorted(set(ours) ^ set(merged))[:3]})"
        else:
            for k in sorted(ours):
                a, b = ours[k].float(), merged[k].float()
                tol = 8 * torch.finfo(merged[k].dtype).eps if merged[k].is_floating_point() else 0.0
                if a.shape != b.shape or not torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())):
                    problem = f"{k} differs"
                    break
    if problem is not None:
        raise ValueError(
            f"cannot resume the LoRA/DoRA student from {step_dir}: its frozen base, read from {base_dir}, merged with "
            f"the saved adapters does not give the checkpoint's weights ({problem}); was {base_dir} replaced since "
            "the run started? Resume with the original student checkpoint, or start a new run"
        )
