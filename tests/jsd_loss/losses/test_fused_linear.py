import pytest
import torch
import torch.nn.functional as F

from jsd_loss import FusedLinearJSDistillLoss, FusedLinearKLDistillLoss
from tests.reference import jsd64


def _case(n=37, d=8, dt=12, v=29, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    th = torch.randn(n, dt, generator=g, dtype=torch.float64).to(dtype)
    tw = (torch.randn(v, dt, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.tensor([0, 5, 6, 30]) % n] = -100
    return h, w, th, tw, labels


def _reference(h, w, th, tw, labels, beta, temperature):
    """Unfused float64 reference: full logits, definition-level JSD, mean, plus CE."""
    keep = labels != -100
    s_logits = h.double() @ w.double().t()
    t_logits = th.double() @ tw.double().t()
    kd = jsd64(s_logits[keep], t_logits[keep], beta, temperature).sum() / keep.sum()
    ce = F.cross_entropy(s_logits, labels, ignore_index=-100)
    return kd, ce


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_fused_equals_unfused_in_value_and_every_gradient(beta, chunk_size):
    h, w, th, tw, labels = _case(seed=1)
    temperature = 1.5
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    kd, ce = FusedLinearJSDistillLoss(
        beta=beta, temperature=temperature, chunk_size=chunk_size, return_ce=True
    )(h1, w1, th, tw, labels)
    (0.3 * kd + 0.7 * ce).backward()

    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref_kd, ref_ce = _reference(h2, w2, th, tw, labels, beta, temperature)
    (0.3 * ref_kd + 0.7 * ref_ce).backward()

    torch.testing.assert_close(kd, ref_kd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-9, atol=1e-12)
    assert (h1.grad[labels == -100] == 0).all()


def test_kd_only_gradients_and_3d_inputs():
    h, w, th, tw, labels = _case(n=24, seed=2)
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = FusedLinearKLDistillLoss("forward", chunk_size=5)(
        h1.view(2, 12, -1), w1, th.view(2, 12, -1), tw, labels.view(2, 12)
    )
    loss.backward()
    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref, _ = _reference(h2, w2, th, tw, labels, 0.0, 1.0)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(h1.grad, h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)


def test_gradcheck_float64():
    h, w, th, tw, labels = _case(n=6, d=3, dt=4, v=5, seed=3)
    labels[2] = -100
    fn = FusedLinearJSDistillLoss(beta=0.3, temperature=2.0, chunk_size=4, return_ce=True)
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, th, tw, labels),
        (h.requires_grad_(True), w.requires_grad_(True)),
    )


def test_float32_matches_float64_reference():
    h, w, th, tw, labels = _case(n=50, d=16, dt=16, v=97, seed=4, dtype=torch.float32)
    h1 = h.clone().requires_grad_(True)
    loss = FusedLinearJSDistillLoss(chunk_size=16)(h1, w, th, tw, labels)
    loss.backward()
    h2 = h.double().requires_grad_(True)
    ref, _ = _reference(h2, w, th, tw, labels, 0.5, 1.0)
    ref.backward()
    assert loss.dtype == torch.float32 and h1.grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1.grad.double(), h2.grad, rtol=1e-4, atol=1e-7)


def test_bf16_is_finite_nonnegative_and_close():
    h, w, th, tw, labels = _case(n=64, d=16, dt=16, v=97, seed=5, dtype=torch.bfloat16)
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = FusedLinearJSDistillLoss(chunk_size=16)(h1, w1, th, tw, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss >= 0
    assert h1.grad.dtype == torch.bfloat16 and torch.isfinite(w1.grad.float()).all()
    ref, _ = _reference(h, w, th, tw, labels, 0.5, 1.0)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=1e-4)


def test_all_masked():
    h, w, th, tw, labels = _case(seed=6)
    h.requires_grad_(True)
    kd, ce = FusedLinearJSDistillLoss(return_ce=True)(h, w, th, tw, torch.full_like(labels, -100))
    (kd + ce).backward()
    assert kd.item() == 0.0 and ce.item() == 0.0 and torch.count_nonzero(h.grad) == 0


def test_shape_errors():
    h, w, th, tw, labels = _case()
    fn = FusedLinearJSDistillLoss()
    with pytest.raises(ValueError, match="vocab size"):
        fn(h, w, th, tw[:-1], labels)
    with pytest.raises(ValueError, match="student hidden dim"):
        fn(h[:, :-1], w, th, tw, labels)
    with pytest.raises(ValueError, match="token counts"):
        fn(h, w, th, tw, labels[:-1])
