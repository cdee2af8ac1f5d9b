"""Steps that must never reach the weights: a step whose loss or gradient norm is not finite
is skipped before the optimizer sees it (its gradients dropped), logged and counted, and a
run stops once it has skipped more than it may. A micro-batch with no trained label (its mean
losses would be 0/0) is made to contribute nothing instead of NaN gradients."""

import logging
import math
from typing import Optional, Union

import torch

DEFAULT_MAX_SKIPPED_STEPS = 3


class NonFiniteSteps:
    """
    Decides, at the end of each optimizer step, whether the step may be applied.

    Args:
        max_skipped (int): non-finite steps a run may skip; one more is an error.
            Default: ``DEFAULT_MAX_SKIPPED_STEPS``
        skipped (int): steps skipped already (restored on resume). Default: 0
        log (Optional[logging.Logger]): where skipped steps are reported. Default: None

    Raises:
        ValueError: if ``max_skipped`` is not a non-negative integer.
    """

    def __init__(
        self, max_skipped: int = DEFAULT_MAX_SKIPPED_STEPS, skipped: int = 0, log: Optional[logging.Logger] = None
    ) -> None:
        if isinstance(max_skipped, bool) or not isinstance(max_skipped, int) or max_skipped < 0:
            raise ValueError(f"max_skipped_steps must be a non-negative integer, got {max_skipped!r}")
        self.max_skipped = max_skipped
        self.skipped = skipped
        self._log = log or logging.getLogger(__name__)

    def skip(self, step: int, loss: float, grad_norm: Union[float, torch.Tensor]) -> bool:
        """True when step ``step`` (1-based) must not be applied: its ``loss`` or ``grad_norm``
        (all ranks agree on both: they are reduced over ranks) is NaN or infinite.

        Raises:
            RuntimeError: if this makes more than ``max_skipped`` skipped steps.
        """
        norm = float(grad_norm)
        if math.isfinite(loss) and math.isfinite(norm):
            return False
        self.skipped += 1
        what = f"step {step}: non-finite loss {loss} or gradient norm {norm}"
        if self.skipped > self.max_skipped:
            raise RuntimeError(
                f"{what}: {self.skipped} non-finite steps, more than max_skipped_steps={self.max_skipped}; "
                "stopping (no non-finite update was applied; the last step_N checkpoint is intact)"
            )
        self._log.warning(f"{what}: skipped, weights and optimizer state unchanged "
                          f"({self.skipped} of at most {self.max_skipped} skipped steps)")
        return True


def loss_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """
    Labels the losses can average over: ``labels`` itself, or, when no position is trained
    (an empty micro-batch: its mean CE is 0/0 = NaN, and NaN times its zero label count is
    still NaN in the step's loss, as in the gradients of a loss without a guard), a copy with
    one placeholder label (token 0 at the first position). The caller weights the micro-batch's
    losses by its label count, zero, so its loss and gradients are exactly zero: it contributes
    nothing.

    Args:
        labels (torch.Tensor): shifted labels, (B, T).
        ignore_index (int): label value of untrained positions.

    Returns:
        torch.Tensor: labels with at least one trained position.
    """
    if (labels != ignore_index).any():
        return labels
    labels = labels.clone()
    labels.view(-1)[0] = 0
    return labels
