"""The loss modules (token, chunked, fused-linear) with a top-k + tail teacher."""

import pytest
import torch
import torch.nn.functional as F

from jsd_loss import (
    FusedLinearJSDistillLoss,
    FusedLinearKLDistillLoss,
    JSDistillLoss,
    JSDistillWithChunkedOutputLoss,
    KLDistillLoss,
    KLDistillWithChunkedOutputLoss,
    TopKDistribution,
    topk_from_logits,
)
from tests.jsd_loss.losses.test_topk_divergence import BETAS, TEMPERATURES, _logits, _teacher64
from tests.reference import topk_jsd64


def _labels(b, t, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100
    labels[-1, -1] = -100
    return labels


def _fused_case(b=2, t=7, d=6, dt=5, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64)
    th = torch.randn(b, t, dt, generator=g, dtype=torch.float64)
    tw = torch.randn(v, dt, generator=g, dtype=torch.float64)
    return h, w, th, tw


def _run(loss_fn, student, *args):
    """Loss value and the gradient of the student input(s) (a combined objective with CE)."""
    leaves = [x.clone().requires_grad_(True) for x in student]
    out = loss_fn(*leaves, *args)
    total = 0.3 * out[0] + 0.7 * out[1] if isinstance(out, tuple) else out
    total.backward()
    return out, [x.grad for x in leaves]


def _assert_same(a, b, rtol=1e-10, atol=1e-12):
    (va, ga), (vb, gb) = a, b
    torch.testing.assert_close(va, vb, rtol=rtol, atol=atol)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y.reshape(x.shape), rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_full_vocab_modules_equal_dense_modules(beta, temperature):
    h, w, th, tw = _fused_case(seed=14)
    s, t = h @ w.t(), th @ tw.t()
    labels = _labels(2, 7, 11)
    teacher = topk_from_logits(t, 11, temperature)
    token = JSDistillLoss(beta, temperature)
    _assert_same(_run(token, [s], teacher, labels), _run(token, [s], t, labels))
    chunked = JSDistillWithChunkedOutputLoss(3, beta, temperature)
    as_chunks = lambda x, *rest: chunked(list(x.chunk(3, dim=1)), *rest)  # noqa: E731
    _assert_same(_run(as_chunks, [s], teacher, labels), _run(as_chunks, [s], list(t.chunk(3, 1)), labels))
    fused = FusedLinearJSDistillLoss(beta, temperature, chunk_size=4, return_ce=True)
    _assert_same(_run(fused, [h, w], teacher, None, labels), _run(fused, [h, w], th, tw, labels))


def _meantopk_jsd64(s, teacher, labels, beta, temperature):
    keep = labels != -100
    return topk_jsd64(s[keep], teacher.select(keep), beta, temperature).sum() / keep.sum()


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_modules_match_the_buckettopk_jsd64(beta, temperature):
    h, w, th, tw = _fused_case(seed=15)
    s = h @ w.t()
    labels = _labels(2, 7, 11, seed=1)
    teacher = _teacher64(th @ tw.t(), 4, temperature)
    ref = _run(lambda x: _meantopk_jsd64(x, teacher, labels, beta, temperature), [s])
    _assert_same(_run(JSDistillLoss(beta, temperature), [s], teacher, labels), ref)
    flat = lambda x: JSDistillLoss(beta, temperature)(x.view(14, 11), teacher.flatten(), labels.view(14))  # noqa: E731
    _assert_same(_run(flat, [s]), ref)
    chunked = JSDistillWithChunkedOutputLoss(3, beta, temperature)
    _assert_same(_run(lambda x: chunked(list(x.tensor_split(3, 1)), teacher, labels), [s]), ref)
    fused = FusedLinearJSDistillLoss(beta, temperature, chunk_size=3)
    ref_hw = _run(lambda a, b: _meantopk_jsd64(a @ b.t(), teacher, labels, beta, temperature), [h, w])
    _assert_same(_run(fused, [h, w], teacher, None, labels), ref_hw)
    _assert_same(_run(fused, [h.view(14, 6), w], teacher.flatten(), None, labels.view(14)), ref_hw)


@pytest.mark.parametrize("direction,beta", [("forward", 0.0), ("reverse", 1.0)])
def test_kl_modules_take_a_topk_teacher(direction, beta):
    h, w, th, tw = _fused_case(seed=16)
    s = h @ w.t()
    labels = _labels(2, 7, 11, seed=2)
    teacher = _teacher64(th @ tw.t(), 3, 1.5)
    ref = _run(lambda x: _meantopk_jsd64(x, teacher, labels, beta, 1.5), [s])
    _assert_same(_run(KLDistillLoss(direction, 1.5), [s], teacher, labels), ref)
    chunked = KLDistillWithChunkedOutputLoss(4, direction, 1.5)
    _assert_same(_run(lambda x: chunked(list(x.chunk(4, 1)), teacher, labels), [s]), ref)
    kd, ce = FusedLinearKLDistillLoss(direction, 1.5, chunk_size=5, return_ce=True)(h, w, teacher, None, labels)
    torch.testing.assert_close(kd, ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce, F.cross_entropy(s.view(14, 11), labels.view(14)), rtol=1e-10, atol=1e-12)


def test_masked_rows_may_hold_padding_and_fully_masked_batches_are_zero():
    h, w, th, tw = _fused_case(seed=17)
    s = h @ w.t()
    labels = _labels(2, 7, 11, seed=3)
    teacher = _teacher64(th @ tw.t(), 3)
    masked = labels == -100
    padded = TopKDistribution(
        teacher.ids.masked_fill(masked.unsqueeze(-1), -1),  # not valid ids
        teacher.log_probs.masked_fill(masked.unsqueeze(-1), float("nan")),
        teacher.tail_log_mass.masked_fill(masked, float("nan")),
    )
    chunked = JSDistillWithChunkedOutputLoss(2)
    forms = [
        (lambda x, te, y: JSDistillLoss()(x, te, y), [s]),
        (lambda x, te, y: chunked(list(x.chunk(2, 1)), te, y), [s]),
        (lambda a, b, te, y: FusedLinearJSDistillLoss(chunk_size=4)(a, b, te, None, y), [h, w]),
    ]
    for fn, inputs in forms:
        _assert_same(_run(fn, inputs, padded, labels), _run(fn, inputs, teacher, labels))
        value, grads = _run(fn, inputs, padded, torch.full_like(labels, -100))
        assert value.item() == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)


def test_bf16_logits_give_a_float32_loss():
    s = _logits(2, 5, 13, seed=24, dtype=torch.bfloat16)
    teacher = topk_from_logits(_logits(2, 5, 13, seed=25, dtype=torch.float32), 4)
    x = s.clone().requires_grad_(True)
    loss = JSDistillLoss()(x, teacher, _labels(2, 5, 13))
    loss.backward()
    assert loss.dtype == torch.float32 and loss >= 0 and x.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad.float()).all()



def test_chunked_and_fused_shape_errors():
    h, w, th, tw = _fused_case(seed=28)
    s, labels = h @ w.t(), _labels(2, 7, 11)
    teacher = topk_from_logits(th @ tw.t(), 3)
    with pytest.raises(ValueError, match=r"\(2, 6, 3\).*\(2, 7\)"):
        JSDistillWithChunkedOutputLoss(2)(list(s.chunk(2, 1)), teacher.split([6, 1])[0], labels)
    with pytest.raises(ValueError, match="cover 5 tokens"):
        JSDistillWithChunkedOutputLoss(2)([s[:, :5]], teacher, labels)
    fused = FusedLinearJSDistillLoss()
    with pytest.raises(ValueError, match="teacher_weight must be None"):
        fused(h, w, teacher, tw, labels)
    with pytest.raises(ValueError, match=r"token counts differ: student 14, top-k teacher 12"):
        fused(h, w, teacher.split([6, 1])[0], None, labels)
    with pytest.raises(ValueError, match="outside the student vocab"):
        fused(h, w[:5], teacher, None, labels)


def test_module_errors_name_both_shapes_and_bad_ids():
    good = topk_from_logits(_logits(4, 11, seed=27), 3)
    s = _logits(4, 11, seed=26)
    with pytest.raises(ValueError, match=r"\(2, 2, 11\).*\(4, 3\)"):
        JSDistillLoss()(s.view(2, 2, 11), good, torch.zeros(2, 2, dtype=torch.long))
    ids = good.ids.clone()
    ids[2, 1] = 11
    with pytest.raises(ValueError, match="outside the student vocab"):
        JSDistillLoss()(s, good._replace(ids=ids), torch.zeros(4, dtype=torch.long))
