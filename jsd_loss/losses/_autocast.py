"""How the losses meet ``torch.autocast``: the divergence math switches it off (it is float32
by design, and autocast would run its row dot products, which are matmuls, in bf16), while
the fused-linear losses read autocast's dtype once and run their big matmuls in it,
explicitly."""

import functools
from typing import Optional

import torch


def _autocast_off(fn):
    """``fn`` with autocast switched off on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast runs matmuls in on ``device`` now; None when it is off there."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
