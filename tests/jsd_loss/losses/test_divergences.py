"""The divergences beyond the JSD family (alpha-beta, adaptive KL, total variation, skew KL)
against float64 references written from their definitions (tests/reference.py)."""

import math

import pytest
import torch

from jsd_loss import (
    AdaptiveKLDistillLoss,
    AdaptiveKLDivergence,
    AlphaBetaDistillLoss,
    AlphaBetaDivergence,
    DistillLoss,
    Divergence,
    JSDivergence,
    KLDistillLoss,
    KLDivergence,
    SkewKLDistillLoss,
    SkewKLDivergence,
    TotalVariationDistillLoss,
    TotalVariationDivergence,
)
from jsd_loss.losses import divergence_of_logits
from tests.reference import alpha_beta_probs64, divergence64, jsd64, log_softmax64

# (divergence, reference name, reference parameters)
CASES = {
    "ab_hellinger": (lambda: AlphaBetaDivergence(0.5, 0.5), "alpha_beta", dict(alpha=0.5, beta=0.5)),
    "ab_general": (lambda: AlphaBetaDivergence(0.8, 0.3), "alpha_beta", dict(alpha=0.8, beta=0.3)),
    "ab_negative_beta": (lambda: AlphaBetaDivergence(1.2, -0.4), "alpha_beta", dict(alpha=1.2, beta=-0.4)),
    "ab_beta_zero": (lambda: AlphaBetaDivergence(0.7, 0.0), "alpha_beta", dict(alpha=0.7, beta=0.0)),
    "ab_alpha_zero": (lambda: AlphaBetaDivergence(0.0, 0.6), "alpha_beta", dict(alpha=0.0, beta=0.6)),
    "ab_sum_zero": (lambda: AlphaBetaDivergence(0.4, -0.4), "alpha_beta", dict(alpha=0.4, beta=-0.4)),
    "ab_origin": (lambda: AlphaBetaDivergence(0.0, 0.0), "alpha_beta", dict(alpha=0.0, beta=0.0)),
    "akl": (lambda: AdaptiveKLDivergence(0.5), "adaptive_kl", dict(mu=0.5)),
    "akl_wide_head": (lambda: AdaptiveKLDivergence(0.9), "adaptive_kl", dict(mu=0.9)),
    "tv": (lambda: TotalVariationDivergence(), "total_variation", {}),
    "skew_forward": (lambda: SkewKLDivergence(0.1, "forward"), "skew_kl", dict(alpha=0.1, direction="forward")),
    "skew_reverse": (lambda: SkewKLDivergence(0.3, "reverse"), "skew_kl", dict(alpha=0.3, direction="reverse")),
}
SMOOTH = [name for name in CASES if not name.startswith("akl")]  # AKL's weights are held fixed


def _logits(*shape, scale=2.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _labels(b, t, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100
    labels[-1, -1] = -100
    return labels


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_loss_value_and_gradient_match_the_float64_definition(case, temperature):
    make, name, params = CASES[case]
    s, t, labels = _logits(2, 5, 13, seed=1), _logits(2, 5, 13, seed=2), _labels(2, 5, 13)
    keep = labels != -100
    x = s.clone().requires_grad_(True)
    loss = DistillLoss(make(), temperature)(x, t, labels)
    loss.backward()
    x_ref = s.clone().requires_grad_(True)
    ref = divergence64(name, x_ref[keep], t[keep], temperature, **params).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-8, atol=1e-12)
    # float32 logits: float32 math, close to the float64 definition
    loss32 = DistillLoss(make(), temperature)(s.float(), t.float(), labels)
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), ref.detach(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_closed_form_gradient_equals_autograd_of_the_value(case):
    div = CASES[case][0]()
    log_q, log_p = log_softmax64(_logits(6, 11, seed=3)), log_softmax64(_logits(6, 11, seed=4))
    x = log_q.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(div(x, log_p).sum(), x)
    value, grad = div.value_and_grad(log_q, log_p)
    torch.testing.assert_close(value, div(log_q, log_p), rtol=0, atol=0)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_log_prob_gradient_and_generic_projection(beta):
    """JSD's log-probability gradient, projected by the generic path, is its fused closed form."""
    div = JSDivergence(beta)
    log_q, log_p = log_softmax64(_logits(6, 11, seed=21)), log_softmax64(_logits(6, 11, seed=22))
    x = log_q.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(div(x, log_p).sum(), x)
    torch.testing.assert_close(div.value_and_grad(log_q, log_p)[1], want, rtol=1e-10, atol=1e-13)
    s, t = _logits(6, 11, seed=23), _logits(6, 11, seed=24)
    generic = Divergence.logits_value_and_grad(div, s, t, 1.7)
    torch.testing.assert_close(generic, div.logits_value_and_grad(s, t, 1.7), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("case", SMOOTH)
def test_gradcheck_float64(case):
    s, t, labels = _logits(2, 3, 5, seed=5), _logits(2, 3, 5, seed=6), _labels(2, 3, 5)
    fn = DistillLoss(CASES[case][0](), temperature=1.5)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, labels), (s.requires_grad_(True),))


def test_alpha_beta_endpoints_are_the_kls():
    s, t, labels = _logits(2, 5, 13, seed=7), _logits(2, 5, 13, seed=8), _labels(2, 5, 13)
    for (alpha, beta), direction in [((1.0, 0.0), "forward"), ((0.0, 1.0), "reverse")]:
        ab = AlphaBetaDistillLoss(alpha, beta, temperature=1.3)(s, t, labels)
        kl = KLDistillLoss(direction, temperature=1.3)(s, t, labels)
        torch.testing.assert_close(ab, kl, rtol=1e-12, atol=1e-14)
    keep = labels != -100
    torch.testing.assert_close(
        AlphaBetaDistillLoss(1.0, 0.0)(s, t, labels), jsd64(s[keep], t[keep], 0.0).mean(), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha,beta,limit", [
    (0.6, 1e-7, (0.6, 0.0)), (1e-7, 0.6, (0.0, 0.6)), (0.5, -0.5 + 1e-7, (0.5, -0.5)),
    (1e-7, -1e-7 / 2, (0.0, 0.0)), (1.0, 1e-9, (1.0, 0.0)),
])
def test_alpha_beta_is_continuous_across_its_singular_lines(alpha, beta, limit, dtype):
    """Near alpha = 0, beta = 0 or alpha + beta = 0 the general formula is 0/0; the value there
    is the closed-form limit's, in float32 too (no cancellation)."""
    log_q, log_p = log_softmax64(_logits(6, 17, seed=9)), log_softmax64(_logits(6, 17, seed=10))
    got = AlphaBetaDivergence(alpha, beta)(log_q.to(dtype), log_p.to(dtype)).double()
    want = alpha_beta_probs64(log_q.exp(), log_p.exp(), *limit)
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float64 else 2e-6, atol=0)


def test_skew_kl_at_alpha_zero_is_the_kl_and_is_bounded_otherwise():
    s, t, labels = _logits(2, 5, 13, seed=11), _logits(2, 5, 13, seed=12), _labels(2, 5, 13)
    for direction in ("forward", "reverse"):
        torch.testing.assert_close(
            SkewKLDistillLoss(0.0, direction, 2.0)(s, t, labels), KLDistillLoss(direction, 2.0)(s, t, labels),
            rtol=1e-12, atol=0,
        )
    # skewing bounds the KL by log(1 / alpha) even where the student has no mass at all
    log_p = log_softmax64(_logits(4, 9, seed=13))
    log_q = torch.full_like(log_p, -1e30)
    log_q[:, 0] = 0.0
    assert (SkewKLDivergence(0.2)(log_q, log_p) <= math.log(1 / 0.2) + 1e-12).all()


def test_total_variation_and_adaptive_kl_by_hand():
    log_q = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log()
    log_p = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64).log()
    assert TotalVariationDivergence()(log_q, log_p).item() == pytest.approx(0.1)
    # mu = 0.5: the head is the top token alone (0.6 > 0.5 but the top one is always in);
    # gaps 0.1, 0, 0.1 -> w_head = 1/2
    fkl = 0.6 * math.log(0.6 / 0.5) + 0.1 * math.log(0.1 / 0.2)
    rkl = 0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.1)
    assert AdaptiveKLDivergence(0.5)(log_q, log_p).item() == pytest.approx(0.5 * fkl + 0.5 * rkl)
    # mu = 0.95: head 0.6 + 0.3 (cumulative 0.9), gaps 0.1 + 0 of 0.2 -> still 1/2; mu = 1: all
    assert AdaptiveKLDivergence(0.95)(log_q, log_p).item() == pytest.approx(0.5 * fkl + 0.5 * rkl)
    assert AdaptiveKLDivergence(1.0)(log_q, log_p).item() == pytest.approx(fkl)
    same = AdaptiveKLDivergence()(log_p, log_p)
    assert same.item() == pytest.approx(0.0, abs=1e-15)


def test_aliases_are_the_generic_loss_with_their_divergence():
    s, t, labels = _logits(2, 5, 13, seed=14), _logits(2, 5, 13, seed=15), _labels(2, 5, 13)
    pairs = [
        (AlphaBetaDistillLoss(0.3, 0.9, 2.0), AlphaBetaDivergence(0.3, 0.9)),
        (AdaptiveKLDistillLoss(0.7, 2.0), AdaptiveKLDivergence(0.7)),
        (TotalVariationDistillLoss(2.0), TotalVariationDivergence()),
        (SkewKLDistillLoss(0.2, "reverse", 2.0), SkewKLDivergence(0.2, "reverse")),
        (KLDistillLoss("reverse", 2.0), KLDivergence("reverse")),
    ]
    for alias, div in pairs:
        assert torch.equal(alias(s, t, labels), DistillLoss(div, 2.0)(s, t, labels))


@pytest.mark.parametrize("case", CASES)
def test_masking_bf16_and_all_masked(case):
    make = CASES[case][0]
    s, t, labels = _logits(2, 5, 13, seed=16), _logits(2, 5, 13, seed=17), _labels(2, 5, 13)
    s = s.clone()
    s[0, 0] = float("nan")  # a masked position
    x = s.clone().requires_grad_(True)
    loss = DistillLoss(make())(x, t, labels)
    loss.backward()
    assert torch.isfinite(loss) and (x.grad[labels == -100] == 0).all()
    zero = DistillLoss(make())(x, t, torch.full_like(labels, -100))
    assert zero.item() == 0.0
    b16 = _logits(4, 6, 50, scale=0.3, seed=18, dtype=torch.bfloat16)
    loss16 = DistillLoss(make())(b16.clone().requires_grad_(True), b16 + 0.01, torch.zeros(4, 6, dtype=torch.long))
    assert loss16.dtype == torch.float32 and loss16.item() >= 0.0


@pytest.mark.parametrize("case", CASES)
def test_minus_inf_logits_are_finite(case):
    """Tokens both models ban drop out exactly; a token only the student (or only the teacher)
    bans keeps the value and gradient finite."""
    make, name, params = CASES[case]
    s, t = _logits(5, 12, seed=19), _logits(5, 12, seed=20)
    s_ban, t_ban = s.clone(), t.clone()
    s_ban[:, [3, 7]] = t_ban[:, [3, 7]] = float("-inf")
    x = s_ban.clone().requires_grad_(True)
    got = divergence_of_logits(make(), x, t_ban, 1.0)
    kept = [v for v in range(12) if v not in (3, 7)]
    torch.testing.assert_close(got, divergence64(name, s[:, kept], t[:, kept], **params), rtol=1e-9, atol=1e-12)
    loss = DistillLoss(make())(x, t_ban, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:, [3, 7]] == 0).all()
    for student, teacher in [(s_ban, t), (s, t_ban)]:
        for dtype in (torch.float64, torch.float32):
            y = student.to(dtype).clone().requires_grad_(True)
            value = DistillLoss(make())(y, teacher.to(dtype), torch.zeros(5, dtype=torch.long))
            value.backward()
            assert torch.isfinite(value) and value >= 0 and torch.isfinite(y.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mu"):
        AdaptiveKLDivergence(1.5)
    with pytest.raises(ValueError, match="alpha"):
        SkewKLDivergence(1.0)
    with pytest.raises(ValueError, match="direction"):
        SkewKLDivergence(0.1, "both")
    with pytest.raises(ValueError, match="finite"):
        AlphaBetaDivergence(float("nan"), 1.0)
    with pytest.raises(ValueError, match="beta"):
        JSDivergence(2.0)
    with pytest.raises(ValueError, match="temperature"):
        AlphaBetaDistillLoss(temperature=0.0)
    with pytest.raises(TypeError, match="Divergence"):
        DistillLoss("jsd")
