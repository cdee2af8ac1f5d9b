import logging
import math

import pytest
import torch
from torchtune.modules.loss import CEWithChunkedOutputLoss

from jsd_loss.training import NonFiniteSteps, loss_labels


def test_non_finite_steps_are_skipped_then_refused(caplog):
    steps = NonFiniteSteps(max_skipped=2, log=logging.getLogger("t"))
    assert not steps.skip(1, 2.5, torch.tensor(0.3))
    with caplog.at_level(logging.WARNING):
        assert steps.skip(2, math.nan, torch.tensor(0.3))
        assert steps.skip(3, 1.0, torch.tensor(math.inf))
    assert "step 2: non-finite loss nan" in caplog.text and "(2 of at most 2 skipped steps)" in caplog.text
    with pytest.raises(RuntimeError, match="step 7: .* 3 non-finite steps, more than max_skipped_steps=2"):
        steps.skip(7, -math.inf, 0.0)
    with pytest.raises(RuntimeError, match="more than max_skipped_steps=0"):
        NonFiniteSteps(0).skip(1, math.nan, 0.0)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_skipped_steps must be a non-negative integer"):
            NonFiniteSteps(bad)


def test_an_empty_micro_batch_weighted_by_its_zero_tokens_is_zero_not_nan():
    ce = CEWithChunkedOutputLoss(num_output_chunks=1)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    empty = torch.full((2, 5), ce.ignore_index)
    # the failure it prevents: CE over no tokens is 0/0, and NaN * 0 tokens is NaN
    assert (ce([logits], empty) * 0).isnan()
    objective = ce([logits], loss_labels(empty, ce.ignore_index)) * 0
    objective.backward()
    assert objective == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    labels = torch.randint(0, 7, (2, 5))
    assert loss_labels(labels, ce.ignore_index) is labels
    assert (empty == ce.ignore_index).all()  # the caller's labels are left alone
