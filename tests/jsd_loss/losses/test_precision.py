"""The losses under bf16 autocast: the divergence math stays float32 in every form, and the
fused-linear losses run their matmuls in bf16 on purpose. References are float64 definitions
(tests/reference.py) evaluated on the bf16 logits autocast produces."""

import pytest
import torch
import torch.nn.functional as F

from jsd_loss import (
    FusedLinearJSDistillLoss,
    JSDistillLoss,
    JSDistillWithChunkedOutputLoss,
    TopKDistribution,
    generalized_jsd_and_grad,
    student_divergence,
    topk_from_logits,
    topk_generalized_jsd_and_grad,
    topk_student_divergence,
)
from tests.reference import jsd64, topk_jsd64

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _logits(n=48, v=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("teacher_form", ["dense", "topk"])
def test_the_closed_forms_compute_in_float32_under_autocast(beta, teacher_form):
    """Autocast runs matmuls in bf16, and the closed forms' row dot products are matmuls: before
    they switched it off, the value was off by ~2% and the gradient by ~7% here."""
    s, t = _logits()
    teacher = topk_from_logits(t, 40) if teacher_form == "topk" else t
    value_and_grad = topk_generalized_jsd_and_grad if teacher_form == "topk" else generalized_jsd_and_grad
    with torch.autocast(**BF16):
        div, grad = value_and_grad(s, teacher, beta, 1.5)
        lean = (topk_student_divergence if teacher_form == "topk" else student_divergence)(
            s.clone().requires_grad_(True), teacher, beta, 1.5)
    s64 = s.double().requires_grad_(True)
    ref = topk_jsd64(s64, teacher, beta, 1.5) if teacher_form == "topk" else jsd64(s64, t, beta, 1.5)
    ref.sum().backward()
    assert div.dtype == grad.dtype == lean.dtype == torch.float32
    torch.testing.assert_close(div.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean.detach().double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def _hidden_case(b=2, t=12, d=16, dt=24, v=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, th = torch.randn(b, t, d, generator=g), torch.randn(b, t, dt, generator=g)
    w, tw = torch.randn(v, d, generator=g) * 0.5, torch.randn(v, dt, generator=g) * 0.5
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100
    return h, w, th, tw, labels


def _form_loss(form, h, w, th, tw, labels, topk):
    """The loss of ``form`` in the current autocast state; logits forms get autocast's logits."""
    if form == "fused":
        teacher, teacher_w = (topk, None) if topk is not None else (th, tw)
        return FusedLinearJSDistillLoss(chunk_size=7)(h, w, teacher, teacher_w, labels)
    s_logits = F.linear(h, w)
    teacher = topk if topk is not None else F.linear(th, tw)
    if form == "chunked":
        teacher = teacher if topk is not None else list(teacher.chunk(4, dim=1))
        return JSDistillWithChunkedOutputLoss(num_output_chunks=4)(list(s_logits.chunk(4, dim=1)), teacher, labels)
    return JSDistillLoss()(s_logits, teacher, labels)


@pytest.mark.parametrize("teacher_form", ["dense", "topk"])
@pytest.mark.parametrize("form", ["token", "chunked", "fused"])
def test_every_loss_form_is_the_float32_divergence_of_bf16_logits_under_autocast(form, teacher_form):
    """Value: the float64 JSD of the bf16 logits autocast makes, within 2e-6 (float32 math), so
    the fused loss's matmuls are bf16 (fp32 logits would be 3.5e-4 away). Gradients: fp32 for
    fp32 weights, equal to the token-level loss's autograd through autocast at bf16 precision
    (2e-2: the fused loss rounds its weight gradient to bf16 per chunk of 7 tokens)."""
    h, w, th, tw, labels = _hidden_case()
    topk = None
    if teacher_form == "topk":
        topk = topk_from_logits(F.linear(th, tw), 32)
    hw = [x.clone().requires_grad_(True) for x in (h, w)]
    with torch.autocast(**BF16):
        loss = _form_loss(form, *hw, th, tw, labels, topk)
        s_bf16 = F.linear(h, w)
        t_bf16 = F.linear(th, tw)
    loss.backward()
    keep = labels != -100
    if topk is not None:
        ref = topk_jsd64(s_bf16[keep], TopKDistribution(*(x[keep] for x in topk)), 0.5)
    else:
        ref = jsd64(s_bf16[keep], t_bf16[keep], 0.5)
    fp32_ref = jsd64(F.linear(h, w)[keep], F.linear(th, tw)[keep], 0.5) if topk is None else None
    assert s_bf16.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref.mean(), rtol=2e-6, atol=0)
    if fp32_ref is not None:  # fp32 logits would be 3.5e-4 away here: bf16 is told from fp32
        assert abs(float(fp32_ref.mean()) - float(ref.mean())) > 1e-4 * float(ref.mean())
    token = [x.clone().requires_grad_(True) for x in (h, w)]
    with torch.autocast(**BF16):
        _form_loss("token", *token, th, tw, labels, topk).backward()
    for got, want in zip(hw, token):
        assert got.grad.dtype == torch.float32
        torch.testing.assert_close(got.grad, want.grad, rtol=2e-2, atol=2e-5)


def test_a_bf16_teacher_weight_sets_the_teacher_matmul_dtype_without_autocast():
    """An fp32 student with a bf16 teacher (``teacher_dtype: bf16``): the teacher's logits are
    its bf16 matmul, the student's stay fp32, the math float32."""
    h, w, th, tw, labels = _hidden_case(seed=3)
    loss = FusedLinearJSDistillLoss(chunk_size=5)(h, w, th.bfloat16(), tw.bfloat16(), labels)
    keep = labels != -100
    t_bf16 = (th.bfloat16() @ tw.bfloat16().t())[keep]
    ref = jsd64((h @ w.t())[keep], t_bf16, 0.5).mean()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
