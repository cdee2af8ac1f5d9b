"""A distillation run's precision, read from its config and checked when the recipe is
constructed (before anything is built or loaded):

* ``dtype``: the student's weights, gradients and optimizer state (fp32 or bf16);
* ``teacher_dtype``: the teacher's weights and forward (default: ``dtype``);
* ``mixed_precision: bf16``: the student's and teacher's forwards and the losses run under
  ``torch.autocast`` in bf16 (matmuls in bf16; the losses' softmax math stays fp32) while the
  weights, gradients and optimizer state stay in ``dtype``, which must then be fp32.
"""

import contextlib
import logging
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
from omegaconf import DictConfig
from torchtune import training

# values of mixed_precision that ask for nothing
_OFF = (None, False, "none")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """The dtypes of a run: the student's (``dtype``), the teacher's (``teacher_dtype``) and
    autocast's (``autocast_dtype``, None when the run does not autocast)."""

    dtype: torch.dtype
    teacher_dtype: torch.dtype
    autocast_dtype: Optional[torch.dtype] = None

    def autocast(self, device: torch.device) -> ContextManager:
        """The context the forwards and losses of a step run in."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def _weight_dtype(cfg: DictConfig, key: str, device: torch.device) -> torch.dtype:
    dtype = training.get_dtype(cfg.get(key), device=device)
    if dtype == torch.float16:
        raise ValueError(f"{key}=fp16 is not supported in this recipe. Please use fp32 or bf16.")
    return dtype


def precision_from_config(cfg: DictConfig, device: torch.device) -> Precision:
    """
    The run's :class:`Precision` from ``dtype``, ``teacher_dtype`` and ``mixed_precision``.

    Args:
        cfg (DictConfig): the recipe's config.
        device (torch.device): the training device (bf16 must be supported there).

    Returns:
        Precision: the checked dtypes.

    Raises:
        ValueError: for fp16 anywhere, an unknown ``mixed_precision``, ``mixed_precision: bf16``
            with a ``dtype`` other than fp32 (there are no fp32 master weights to keep), and
            each message names the keys. ``teacher_dtype`` with a ``teacher_cache`` the
            teacher is never run for (no ``teacher_cache_fallback: live``) is only logged.
    """
    dtype = _weight_dtype(cfg, "dtype", device)
    teacher_dtype = dtype if cfg.get("teacher_dtype") is None else _weight_dtype(cfg, "teacher_dtype", device)
    if cfg.get("teacher_dtype") is not None and cfg.get("teacher_cache") \
            and cfg.get("teacher_cache_fallback", "error") != "live":
        # a config shipping teacher_dtype must still run with teacher_cache=... added on the command line
        log.warning(
            f"teacher_dtype={cfg.teacher_dtype} is unused with teacher_cache={cfg.teacher_cache}: the teacher is "
            "not run, its distributions come from the cache (teacher_cache_fallback: live would run it in that "
            "dtype for the rows the cache lacks)."
        )
    mixed = cfg.get("mixed_precision")
    if mixed in _OFF:
        return Precision(dtype, teacher_dtype)
    if mixed == "fp16":
        raise ValueError(
            "mixed_precision=fp16 is not supported: fp16 autocast needs loss scaling (a GradScaler), "
            "which this recipe does not implement. Use mixed_precision: bf16."
        )
    if mixed != "bf16":
        raise ValueError(f"mixed_precision must be null or bf16, got {mixed!r}")
    if dtype != torch.float32:
        raise ValueError(
            f"mixed_precision=bf16 keeps fp32 master weights and needs dtype: fp32, got dtype={cfg.dtype} "
            "(dtype: bf16 without mixed_precision trains pure bf16)"
        )
    return Precision(dtype, teacher_dtype, training.get_dtype("bf16", device=device))
