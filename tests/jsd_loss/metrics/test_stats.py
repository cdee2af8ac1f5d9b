import itertools
import math

import numpy as np
import pytest

from jsd_loss.metrics import paired_bootstrap


def test_exact_bootstrap_distribution_of_a_tiny_sample():
    """n = 3 items: the bootstrap distribution of the mean difference is the 27 equally likely
    resamples, enumerated here; the Monte-Carlo quantiles and P(<= 0) must approach it."""
    a, b = [0.9, 0.2, 0.5], [0.1, 0.4, 0.3]  # differences 0.8, -0.2, 0.2
    diffs = np.subtract(a, b)
    exact = np.sort([diffs[list(i)].mean() for i in itertools.product(range(3), repeat=3)])
    got = paired_bootstrap(a, b, n_resamples=200_000, confidence=0.9, seed=1)
    assert got["diff"] == pytest.approx(0.8 / 3 + 0.0, abs=1e-12)
    # the 5% and 95% quantiles of the discrete distribution: the 2nd and 26th of 27 sorted means
    # (cumulative shares 2/27 = 0.074 and 26/27 = 0.963 first pass 0.05 and 0.95)
    assert got["low"] == pytest.approx(exact[1], abs=1e-9)
    assert got["high"] == pytest.approx(exact[25], abs=1e-9)
    assert got["p_not_above_zero"] == pytest.approx(np.mean(exact <= 1e-12), abs=5e-3)


def test_interval_matches_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(0)
    n, sd = 2000, 0.3
    base = rng.uniform(0, 1, n)
    scores = base + 0.05 + rng.normal(0, sd, n)
    got = paired_bootstrap(scores, base, n_resamples=20_000)
    diffs = scores - base
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(n)
    assert got["low"] == pytest.approx(diffs.mean() - half, abs=0.1 * half)
    assert got["high"] == pytest.approx(diffs.mean() + half, abs=0.1 * half)
    assert got["p_not_above_zero"] < 1e-3 and got["n"] == n


def test_constant_difference_and_bad_input():
    got = paired_bootstrap([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert got["low"] == got["high"] == got["diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.0)
