import numpy as np
import pytest

from jsd_loss.metrics import convergence_step, relative_difference, tail_variance


def test_convergence_step_on_a_known_curve():
    steps = list(range(1, 11))
    losses = [10, 8, 6, 4, 2.2, 2.05, 2.0, 2.0, 2.0, 2.0]
    # final 2.0; within 5% means <= 2.1: first reached at step 6 (2.05)
    assert convergence_step(steps, losses, tolerance=0.05, window=1) == 6
    # an early lucky dip reaches the band at step 2 unsmoothed; a 3-step moving average
    # ([10, 6, 6.67, 5.33, 6, 4.02, 2.68, 2.02]) only reaches it at the end
    dip = [10, 2.0, 8, 6, 4, 2.05, 2.0, 2.0]
    assert convergence_step(range(1, 9), dip, window=1) == 2
    assert convergence_step(range(1, 9), dip, window=3) == 8


def test_tail_variance_and_relative_difference():
    losses = [5, 4, 3, 1, 2, 3, 4]
    # last 25% of 7 points -> round(1.75) = 2 points: [3, 4], population variance 0.25
    assert tail_variance(losses, 0.25) == pytest.approx(0.25)
    assert tail_variance(losses, 1.0) == pytest.approx(np.var(losses))
    assert relative_difference(0.8, 1.0) == pytest.approx(-0.2)
    assert relative_difference(1.0, 0.0) is None
