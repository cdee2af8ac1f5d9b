"""Training-curve statistics, as the original study states them."""

from typing import Dict, List, Optional, Sequence

import numpy as np


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(v.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def convergence_step(
    steps: Sequence[int], losses: Sequence[float], tolerance: float = 0.05, window: Optional[int] = None
) -> int:
    """First step at which the smoothed loss comes within ``tolerance`` of its final value.

    Per-step losses of small batches are noisy, so the curve is smoothed with a trailing
    moving average (``window`` defaults to 10% of the run, at least 1): a single lucky step
    does not count as convergence. "Within 5%" means ``|smoothed - final| <= tolerance *
    |final|``, with ``final`` the last smoothed value.
    """
    if len(steps) != len(losses) or not losses:
        raise ValueError("convergence_step needs equally long, non-empty steps and losses")
    window = window or max(1, len(losses) // 10)
    smooth = moving_average(losses, window)
    final = smooth[-1]
    inside = np.nonzero(np.abs(smooth - final) <= tolerance * abs(final))[0]
    return int(steps[inside[0]])


def tail_variance(losses: Sequence[float], last_fraction: float = 0.25) -> float:
    """Population variance of the per-step loss over the last ``last_fraction`` of training."""
    v = np.asarray(losses, dtype=np.float64)
    n = max(2, int(round(len(v) * last_fraction)))
    return float(np.var(v[-n:]))


def relative_difference(value: float, baseline: float) -> Optional[float]:
    """``(value - baseline) / |baseline|``; None when the baseline is 0."""
    if baseline == 0:
        return None
    return (value - baseline) / abs(baseline)


def curve_summary(records: List[Dict], key: str, tolerance: float, last_fraction: float) -> Dict[str, float]:
    """Final value (mean of the last 5% of steps), convergence step and tail variance of ``key``."""
    steps = [r["step"] for r in records if key in r]
    losses = [r[key] for r in records if key in r]
    if not losses:
        raise ValueError(f"the training log has no {key!r} values")
    n_final = max(1, len(losses) // 20)
    return {
        "final": float(np.mean(losses[-n_final:])),
        "convergence_step": convergence_step(steps, losses, tolerance),
        "tail_variance": tail_variance(losses, last_fraction),
        "steps": int(steps[-1]),
    }
