import pytest
import torch
import torch.nn.functional as F

from jsd_loss import JSDistillLoss, KLDistillLoss
from tests.reference import jsd64


def _case(b=2, t=5, v=13, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, v, generator=g) * 2).to(dtype)
    te = (torch.randn(b, t, v, generator=g) * 2).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100
    labels[1, -1] = -100
    return s, te, labels


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.7, 1.0])
def test_mean_over_unmasked_tokens(beta):
    s, t, labels = _case()
    got = JSDistillLoss(beta=beta, temperature=1.5)(
        s.view(-1, 13), t.view(-1, 13), labels.view(-1)
    )
    keep = labels.view(-1) != -100
    ref = jsd64(s.view(-1, 13)[keep], t.view(-1, 13)[keep], beta, 1.5).mean()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_forward_kl_equals_kl_div_per_token_not_per_batch():
    # 'batchmean' divides by the batch size (2), not by the token count (7): a known bug
    s, t, labels = _case()
    keep = labels != -100
    log_q = F.log_softmax(s[keep].double(), -1)
    log_p = F.log_softmax(t[keep].double(), -1)
    ref = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / keep.sum()
    got = KLDistillLoss("forward")(s, t, labels)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    batchmean = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / s.shape[0]
    assert not torch.isclose(got.double(), batchmean, rtol=1e-2)


def test_reverse_kl_and_unnormalized_sum():
    s, t, labels = _case(seed=3)
    keep = labels != -100
    ref = jsd64(s[keep], t[keep], 1.0).sum()
    got = KLDistillLoss("reverse")(s, t, labels, normalize=False)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_masked_rows_do_not_contribute_even_if_nan():
    s, t, labels = _case(seed=4)
    s = s.clone()
    s[0, 0] = float("nan")  # a masked position
    s.requires_grad_(True)
    loss = JSDistillLoss()(s, t, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert (s.grad[labels == -100] == 0).all()


def test_all_masked_is_zero_with_zero_gradient():
    s, t, _ = _case(seed=5)
    s.requires_grad_(True)
    loss = JSDistillLoss()(s, t, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(s.grad) == 0


def test_bf16_logits_give_float32_loss():
    s, t, labels = _case(seed=6, dtype=torch.bfloat16)
    loss = JSDistillLoss()(s, t, labels)
    assert loss.dtype == torch.float32 and loss >= 0


def test_gradcheck_module_float64():
    s, t, labels = _case(b=2, t=3, v=5, seed=7, dtype=torch.float64)
    s.requires_grad_(True)
    labels[0, 1] = -100
    fn = JSDistillLoss(beta=0.3, temperature=2.0)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, labels), (s,))


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="beta"):
        JSDistillLoss(beta=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        JSDistillLoss(temperature=-1)
    with pytest.raises(ValueError, match="direction"):
        KLDistillLoss("both")
