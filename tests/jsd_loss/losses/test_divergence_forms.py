"""Every divergence in every form: per-token, chunked and fused-linear agree in value and
gradient, with a dense teacher and with a top-k + tail teacher; configs build them."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchtune import config

from jsd_loss import (
    AlphaBetaDivergence,
    DistillLoss,
    DistillWithChunkedOutputLoss,
    Divergence,
    FusedLinearDivergenceLoss,
    FusedLinearJSDistillLoss,
    JSDistillLoss,
    JSDivergence,
    SkewKLDivergence,
    topk_from_logits,
)
from jsd_loss.losses import skew_kl
from tests.jsd_loss.losses.test_divergences import CASES, _labels
from tests.jsd_loss.losses.test_topk_divergence import _teacher64
from tests.reference import divergence64, topk_divergence64

FORM_CASES = {**CASES, "jsd": (lambda: JSDivergence(0.3), "jsd", dict(beta=0.3))}


def _fused_case(b=2, t=7, d=6, dt=5, v=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.7
    th = torch.randn(b, t, dt, generator=g, dtype=torch.float64)
    tw = torch.randn(v, dt, generator=g, dtype=torch.float64) * 0.7
    return [x.to(dtype) for x in (h, w, th, tw)]


def _run(fn, h, w):
    """Value and the gradients w.r.t. the student's hidden states and output weight."""
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    value = fn(h, w)
    value.backward()
    return value, h.grad, w.grad


def _assert_same(a, b, rtol=1e-10, atol=1e-12):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _three_forms(div, teacher, temperature, labels, th=None, tw=None):
    """The per-token, chunked and fused-linear losses of ``div`` as functions of (h, w)."""
    dense = not isinstance(teacher, tuple)
    t_logits = th @ tw.t() if dense else teacher
    token = DistillLoss(div, temperature)
    chunked = DistillWithChunkedOutputLoss(div, num_output_chunks=3, temperature=temperature)
    fused = FusedLinearDivergenceLoss(div, temperature, chunk_size=4)
    return [
        lambda h, w: token(h @ w.t(), t_logits, labels),
        lambda h, w: chunked(list((h @ w.t()).chunk(3, 1)), list(t_logits.chunk(3, 1)) if dense else teacher, labels),
        lambda h, w: fused(h, w, th if dense else teacher, tw if dense else None, labels),
    ]


@pytest.mark.parametrize("case", FORM_CASES)
@pytest.mark.parametrize("teacher_form", ["dense", "topk"])
def test_per_token_chunked_and_fused_agree_with_the_reference(case, teacher_form):
    make, name, params = FORM_CASES[case]
    h, w, th, tw = _fused_case(seed=1)
    labels = _labels(2, 7, 11, seed=1)
    keep = labels != -100
    temperature = 1.7
    if teacher_form == "dense":
        teacher = th @ tw.t()
        ref_fn = lambda h, w: divergence64(  # noqa: E731
            name, (h @ w.t())[keep], teacher[keep], temperature, **params).mean()
        forms = _three_forms(make(), None, temperature, labels, th, tw)
    else:
        teacher = _teacher64(th @ tw.t(), 4, temperature)
        ref_fn = lambda h, w: topk_divergence64(  # noqa: E731
            name, (h @ w.t())[keep], teacher.select(keep), temperature, **params).mean()
        forms = _three_forms(make(), teacher, temperature, labels)
    ref = _run(ref_fn, h, w)
    for form in forms:
        _assert_same(_run(form, h, w), ref, rtol=1e-9)


@pytest.mark.parametrize("case", FORM_CASES)
def test_a_full_vocabulary_topk_teacher_equals_the_dense_teacher(case):
    make = FORM_CASES[case][0]
    h, w, th, tw = _fused_case(seed=2)
    labels = _labels(2, 7, 11, seed=2)
    topk = topk_from_logits(th @ tw.t(), 11, 0.8)
    dense_forms = _three_forms(make(), None, 0.8, labels, th, tw)
    topk_forms = _three_forms(make(), topk, 0.8, labels)
    for dense, sparse in zip(dense_forms, topk_forms):
        _assert_same(_run(sparse, h, w), _run(dense, h, w))


@pytest.mark.parametrize("case", ["ab_general", "ab_beta_zero", "tv", "skew_reverse"])
def test_fused_gradcheck_float64(case):
    h, w, th, tw = _fused_case(b=1, t=5, d=3, dt=4, v=6, seed=3)
    labels = torch.tensor([[1, -100, 2, 0, 5]])
    fn = FusedLinearDivergenceLoss(FORM_CASES[case][0](), temperature=1.5, chunk_size=2, return_ce=True)
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, th, tw, labels), (h.requires_grad_(True), w.requires_grad_(True))
    )


@pytest.mark.parametrize("case", CASES)
def test_float32_and_bf16_fused_losses(case):
    make, name, params = CASES[case]
    h, w, th, tw = _fused_case(b=2, t=12, d=16, dt=16, v=97, seed=4, dtype=torch.float32)
    labels = _labels(2, 12, 97, seed=4)
    ref = DistillLoss(make())((h @ w.t()).double(), (th @ tw.t()).double(), labels)
    got = FusedLinearDivergenceLoss(make(), chunk_size=5)(h, w, th, tw, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-6)
    hb, wb = h.bfloat16().requires_grad_(True), w.bfloat16().requires_grad_(True)
    kd, ce = FusedLinearDivergenceLoss(make(), chunk_size=5, return_ce=True)(hb, wb, th.bfloat16(), tw.bfloat16(), labels)
    (kd + ce).backward()
    assert kd.dtype == torch.float32 and kd >= 0 and torch.isfinite(hb.grad.float()).all()
    torch.testing.assert_close(ce.double(), F.cross_entropy((h @ w.t()).double().view(-1, 97), labels.view(-1)),
                               rtol=3e-2, atol=0)


class _AutogradSkewKL(Divergence):
    """A divergence written as its value only: the forms differentiate it by autograd."""

    def forward(self, log_q, log_p):
        return skew_kl(log_q, log_p, 0.2, "reverse")


@pytest.mark.parametrize("teacher_form", ["dense", "topk"])
def test_a_divergence_without_a_closed_form_works_in_every_form(teacher_form):
    h, w, th, tw = _fused_case(seed=5)
    labels = _labels(2, 7, 11, seed=5)
    teacher = None if teacher_form == "dense" else topk_from_logits(th @ tw.t(), 5)
    extra = dict(th=th, tw=tw) if teacher is None else {}
    mine = _three_forms(_AutogradSkewKL(), teacher, 1.0, labels, **extra)
    closed = _three_forms(SkewKLDivergence(0.2, "reverse"), teacher, 1.0, labels, **extra)
    for a, b in zip(mine, closed):
        _assert_same(_run(a, h, w), _run(b, h, w))


def test_the_old_class_names_are_the_generic_forms_with_a_jsd():
    h, w, th, tw = _fused_case(seed=6)
    labels = _labels(2, 7, 11, seed=6)
    old = FusedLinearJSDistillLoss(0.3, 2.0, chunk_size=4)
    assert isinstance(old, FusedLinearDivergenceLoss) and old.beta == 0.3 and old.divergence.beta == 0.3
    new = FusedLinearDivergenceLoss(JSDivergence(0.3), 2.0, chunk_size=4)
    _assert_same(_run(lambda a, b: old(a, b, th, tw, labels), h, w), _run(lambda a, b: new(a, b, th, tw, labels), h, w),
                 rtol=0, atol=0)
    assert isinstance(JSDistillLoss(0.3), DistillLoss) and JSDistillLoss(0.3).beta == 0.3


@pytest.mark.parametrize("component", ["DistillLoss", "DistillWithChunkedOutputLoss", "FusedLinearDivergenceLoss"])
def test_a_config_builds_the_divergence_component(component):
    cfg = OmegaConf.create({
        "_component_": f"jsd_loss.{component}", "temperature": 2.0,
        "divergence": {"_component_": "jsd_loss.AlphaBetaDivergence", "alpha": 0.3, "beta": 0.6},
    })
    loss = config.instantiate(cfg)
    assert isinstance(loss.divergence, AlphaBetaDivergence) and loss.temperature == 2.0
    assert (loss.divergence.alpha, loss.divergence.beta) == (0.3, 0.6)
    with pytest.raises(TypeError, match="Divergence"):
        config.instantiate(OmegaConf.create({"_component_": f"jsd_loss.{component}", "divergence": {"beta": 0.5}}))


@pytest.mark.parametrize("case", CASES)
def test_autocast_leaves_the_divergence_math_in_float32(case):
    make = CASES[case][0]
    h, w, th, tw = _fused_case(b=2, t=6, d=8, dt=8, v=40, seed=7, dtype=torch.float32)
    labels = _labels(2, 6, 40, seed=7)
    s, t = (h @ w.t()).bfloat16().float(), (th @ tw.t()).bfloat16().float()
    plain = _run(lambda a, b: DistillLoss(make())(a, t, labels), s, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _run(lambda a, b: DistillLoss(make())(a, t, labels), s, w)
    torch.testing.assert_close(under[0], plain[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(under[1], plain[1], rtol=1e-5, atol=1e-9)
