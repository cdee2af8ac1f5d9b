from typing import Dict, Sequence

import numpy as np


def paired_bootstrap(
    scores: Sequence[float],
    baseline: Sequence[float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, float]:
    """Percentile-bootstrap confidence interval of ``mean(scores) - mean(baseline)`` where
    ``scores[i]`` and ``baseline[i]`` belong to the same item (e.g. one eval prompt): items are
    resampled with replacement, keeping each pair together.

    Args:
        scores (Sequence[float]): per-item scores, shape ``[n]``.
        baseline (Sequence[float]): the baseline's scores on the same items, shape ``[n]``.
        n_resamples (int): number of bootstrap resamples. Default: 10000
        confidence (float): coverage of the interval, in (0, 1). Default: 0.95
        seed (int): seed of the resampling generator. Default: 0

    Returns:
        Dict[str, float]: ``diff`` (the observed mean difference), ``low`` and ``high`` (the
        interval), ``p_not_above_zero`` (share of resampled differences <= 0) and ``n``.

    Raises:
        ValueError: if the sequences differ in length, are empty, or ``confidence`` is not in (0, 1).
    """
    a, b = np.asarray(scores, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equally long non-empty 1-D score lists, got shapes {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_resamples, diffs.size))
    means = diffs[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high),
            "p_not_above_zero": float((means <= 0).mean()), "n": int(diffs.size)}
