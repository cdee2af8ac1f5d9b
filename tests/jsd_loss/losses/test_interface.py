import pytest
import torch

from jsd_loss import (
    FusedLinearDistillLoss,
    FusedLinearJSDistillLoss,
    FusedLinearKLDistillLoss,
    JSDistillLoss,
    JSDistillWithChunkedOutputLoss,
    KLDistillWithChunkedOutputLoss,
)


def test_fused_linear_losses_declare_the_interface_and_logit_losses_do_not():
    assert isinstance(FusedLinearJSDistillLoss(return_ce=True), FusedLinearDistillLoss)
    assert FusedLinearKLDistillLoss().return_ce is False and FusedLinearJSDistillLoss(return_ce=True).return_ce
    for loss in (JSDistillLoss(), JSDistillWithChunkedOutputLoss(), KLDistillWithChunkedOutputLoss()):
        assert not isinstance(loss, FusedLinearDistillLoss)


def test_a_subclass_must_implement_forward():
    class Incomplete(FusedLinearDistillLoss):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_a_declared_loss_is_called_with_hidden_states_and_weights():
    class DotLoss(FusedLinearDistillLoss):
        def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, labels):
            return (student_hidden @ student_weight.t() - teacher_hidden @ teacher_weight.t()).pow(2).mean()

    h, w = torch.randn(3, 4), torch.randn(10, 4)
    loss = DotLoss()
    assert loss.ignore_index == -100 and not loss.return_ce
    assert float(loss(h, w, h, w, torch.zeros(3, dtype=torch.long))) == 0.0
