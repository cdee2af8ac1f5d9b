"""What a resumed run must share with the checkpoint it resumes: the settings that fix the
data order, the learning-rate schedule and the model (refused, naming the key, when changed),
the random number generators of every rank (CPU and, where present, CUDA), and where the run
stood; and the recipe state of a step checkpoint, which holds all of it."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import training

from jsd_loss.training._adapters import ADAPTER_KEY
from jsd_loss.training._features import FEATURE_STATE
from jsd_loss.training._on_policy import ON_POLICY_STATE
from jsd_loss.training._on_policy_config import OnPolicyConfig

RUN_KEY = "run"  # key of the recipe state
RNG_KEY = "rng_states"  # one per rank

# why a change of each key cannot be resumed
_WHY = {
    "world_size": "each rank's share of the data",
    "batch_size": "the data order and the steps per epoch",
    "gradient_accumulation_steps": "the data order and the steps per epoch",
    "max_steps_per_epoch": "the steps per epoch, so the learning-rate schedule",
    "epochs": "the learning-rate schedule",
    "shuffle": "the data order",
    "dataset": "the rows and their order",
    "tokenizer.max_seq_len": "the tokenized rows",
    "model_shape": "the model the checkpoint holds",
    "adapters": "the student's LoRA/DoRA adapters (modules, rank, alpha)",
    "teachers": "the teachers the student learns from (names, weights, checkpoints, fusion)",
    "on_policy": "which steps train on generated samples, and how they are drawn",
}


def run_identity(
    cfg: DictConfig, world_size: int, model_shape: Dict[str, Any], adapters: Optional[Dict[str, Any]] = None,
    teachers: Optional[Dict[str, Any]] = None, on_policy: Optional[OnPolicyConfig] = None,
) -> Dict[str, Any]:
    """The settings of this run that a resume must keep (plain values: the recipe state is
    read with ``weights_only=True``); ``adapters``: the student's
    :func:`~jsd_loss.training.adapter_identity` (None: full-parameter); ``teachers``: the
    teachers' :meth:`~jsd_loss.training.TeachersConfig.identity` (None: not recorded);
    ``on_policy``: the checked ``on_policy`` block (:func:`~jsd_loss.training.on_policy_config`; None: off)."""
    return {
        "world_size": world_size,
        "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "max_steps_per_epoch": cfg.max_steps_per_epoch,
        "epochs": cfg.epochs,
        "shuffle": cfg.shuffle,
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "tokenizer.max_seq_len": OmegaConf.select(cfg, "tokenizer.max_seq_len", default=None),
        "model_shape": dict(model_shape),
        "adapters": adapters,
        **({"teachers": teachers} if teachers is not None else {}),
        "on_policy": on_policy.identity() if on_policy is not None else None,
    }


def check_resume(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """
    Refuse to resume a checkpoint (recipe state ``saved``, read from ``path``) with settings
    that differ from those it was trained with.

    A checkpoint written before these settings were saved holds only ``world_size``, which is
    checked alone.

    Raises:
        ValueError: naming each changed key, with both values and what it changes.
    """
    recorded = saved.get(RUN_KEY) or {"world_size": saved["world_size"]}
    changed = [k for k in current if k in recorded and recorded[k] != current[k]]
    if changed:
        lines = "; ".join(f"{k} was {recorded[k]!r}, is {current[k]!r} ({_WHY.get(k, 'the run')})" for k in changed)
        raise ValueError(
            f"cannot resume from {path}: this config changes what the checkpoint was trained with: {lines}. "
            "Resume with its values, or start a new run (overwrite_output=True or another output_dir)"
        )


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    """This process's generator states: CPU, and the device's on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(saved: Dict[str, Any], rank: int, device: torch.device) -> None:
    """Restore ``rank``'s generators from a recipe state (one with only ``rng_state``, rank 0's
    CPU generator, written before per-rank states were saved, restores that on every rank)."""
    states: Optional[List[Dict[str, torch.Tensor]]] = saved.get(RNG_KEY)
    state = states[rank] if states is not None else {"cpu": saved["rng_state"]}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Progress:
    """
    Where a run stands: advanced by :class:`~jsd_loss.training.TrainLoop`, saved in every
    step checkpoint's recipe state and restored from it on resume.

    Args:
        total_epochs (int): epochs of the run.
        steps_per_epoch (int): optimizer steps per epoch. Default: 0 (until the data is known)
        epochs_run (int): epochs completed. Default: 0
        global_step (int): optimizer steps taken. Default: 0
    """

    total_epochs: int
    steps_per_epoch: int = 0
    epochs_run: int = 0
    global_step: int = 0

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (what the schedules run over)."""
        return self.total_epochs * self.steps_per_epoch

    @property
    def steps_done_this_epoch(self) -> int:
        return self.global_step - self.epochs_run * self.steps_per_epoch

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a step checkpoint's recipe state."""
        self.global_step = state["global_step"]
        self.epochs_run = state[training.EPOCHS_KEY]


def recipe_state(
    *, optimizer: Dict[str, Any], dataloader: Dict[str, Any], seed: int, progress: Progress,
    rng_states: List[Dict[str, torch.Tensor]], run: Dict[str, Any], world_size: int, skipped_steps: int,
    features: Optional[Dict[str, Any]] = None, adapters: Optional[Dict[str, torch.Tensor]] = None,
    on_policy: Optional[List[Dict[str, torch.Tensor]]] = None,
) -> Dict[str, Any]:
    """
    The recipe state of a step checkpoint (``recipe_state.pt``): everything an exact resume
    restores, as tensors and plain containers (it is read with ``weights_only=True``).

    Args:
        optimizer (Dict[str, Any]): the student's full optimizer state dict.
        dataloader (Dict[str, Any]): the dataloader's state dict (its place in the epoch).
        seed (int): the run's seed.
        progress (Progress): where the run stands.
        rng_states (List[Dict[str, torch.Tensor]]): :func:`rng_state` of every rank, by rank.
        run (Dict[str, Any]): the :func:`run_identity` a resume must keep.
        world_size (int): number of ranks.
        skipped_steps (int): non-finite steps skipped so far.
        features (Optional[Dict[str, Any]]): the feature distiller's recipe state. Default: None (off)
        adapters (Optional[Dict[str, torch.Tensor]]): a LoRA/DoRA student's adapters (its
            saved weights are merged). Default: None (full-parameter)
        on_policy (Optional[List[Dict[str, torch.Tensor]]]): every rank's on-policy generator
            states. Default: None (off)

    Returns:
        Dict[str, Any]: the recipe state.
    """
    return {
        training.OPT_KEY: optimizer,
        training.DATALOADER_KEY: dataloader,
        training.SEED_KEY: seed,
        training.EPOCHS_KEY: progress.epochs_run,
        "global_step": progress.global_step,
        "steps_done_this_epoch": progress.steps_done_this_epoch,
        RNG_KEY: rng_states,
        RUN_KEY: run,
        "world_size": world_size,
        "skipped_steps": skipped_steps,
        **({FEATURE_STATE: features} if features is not None else {}),
        **({ADAPTER_KEY: adapters} if adapters is not None else {}),
        **({ON_POLICY_STATE: on_policy} if on_policy is not None else {}),
    }
