"""The per-token top-k + tail divergences, against float64 bucketed references."""

import math

import pytest
import torch

from jsd_loss import (
    TopKDistribution,
    generalized_jsd,
    generalized_jsd_and_grad,
    topk_from_logits,
    topk_generalized_jsd,
    topk_generalized_jsd_and_grad,
    topk_student_divergence,
)
from tests.reference import jsd64, topk_jsd64, topk_teacher64

BETAS = [0.0, 0.5, 0.9, 1.0]
TEMPERATURES = [0.5, 1.0, 4.0]


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _teacher64(t_logits, k, temperature=1.0):
    """Top-k + tail teacher built independently of topk_from_logits (float64 sort and sum)."""
    return TopKDistribution(*topk_teacher64(t_logits, k, temperature))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_full_vocab_equals_dense_per_token(beta, temperature):
    s, t = _logits(6, 11, seed=4), _logits(6, 11, seed=5)
    teacher = topk_from_logits(t, 11, temperature)
    s1 = s.clone().requires_grad_(True)
    got = topk_generalized_jsd(s1, teacher, beta, temperature)
    s2 = s.clone().requires_grad_(True)
    dense = generalized_jsd(s2, t, beta, temperature)
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)
    (g1,) = torch.autograd.grad(got.sum(), s1)
    (g2,) = torch.autograd.grad(dense.sum(), s2)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)
    val, grad = topk_generalized_jsd_and_grad(s, teacher, beta, temperature)
    dense_val, dense_grad = generalized_jsd_and_grad(s, t, beta, temperature)
    torch.testing.assert_close(val, dense_val, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("k", [1, 4, 10])
def test_value_and_closed_form_gradient_match_the_buckettopk_jsd64(k, temperature, beta):
    s, t = _logits(6, 11, seed=6), _logits(6, 11, seed=7)
    teacher = _teacher64(t, k, temperature)
    s_ref = s.clone().requires_grad_(True)
    ref = topk_jsd64(s_ref, teacher, beta, temperature)
    (ref_grad,) = torch.autograd.grad(ref.sum(), s_ref)
    assert (ref > 1e-6).all()
    got = topk_generalized_jsd(s, teacher, beta, temperature)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-10, atol=1e-12)
    val, grad = topk_generalized_jsd_and_grad(s, teacher, beta, temperature)
    torch.testing.assert_close(val, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-11)
    # float32 logits with float32 teacher fields, as the cache stores them
    t32 = TopKDistribution(teacher.ids, teacher.log_probs.float(), teacher.tail_log_mass.float())
    got32 = topk_generalized_jsd(s.float(), t32, beta, temperature)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_an_unnormalised_teacher_is_used_as_given(beta):
    # a cache rounding its log-probabilities sums to slightly less or more than 1
    s, t = _logits(5, 9, seed=30), _logits(5, 9, seed=31)
    exact = _teacher64(t, 3)
    teacher = TopKDistribution(exact.ids, exact.log_probs - 0.05, exact.tail_log_mass - 0.05)
    s_ref = s.clone().requires_grad_(True)
    ref = topk_jsd64(s_ref, teacher, beta, 1.0)
    (ref_grad,) = torch.autograd.grad(ref.sum(), s_ref)
    assert (ref > 1e-3).all()
    val, grad = topk_generalized_jsd_and_grad(s, teacher, beta)
    torch.testing.assert_close(val, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-11)


def test_hand_computed_case():
    # V = 3, teacher (0.5, 0.3, 0.2) kept as top-1 {0: 0.5} + tail 0.5; student (0.25, 0.25, 0.5)
    # gives Q = (0.25, 0.75)
    teacher = TopKDistribution(torch.tensor([[0]]), torch.tensor([[math.log(0.5)]]), torch.tensor([math.log(0.5)]))
    s = torch.tensor([[0.25, 0.25, 0.5]]).log()
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = (0.375, 0.625)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    )
    for beta, expect in ((0.0, fkl), (1.0, rkl), (0.5, js)):
        assert abs(topk_generalized_jsd(s, teacher, beta).item() - expect) < 1e-6
    # forward KL gradient: Q_j - P_j on the top token, q_v (1 - P_tail / Q_tail) in the tail
    _, grad = topk_generalized_jsd_and_grad(s, teacher, 0.0)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, 0.25 * (1 - 0.5 / 0.75), 0.5 * (1 - 0.5 / 0.75)]]))


@pytest.mark.parametrize("beta", BETAS)
def test_a_lower_bound_of_dense_that_is_tight_for_a_proportional_tail(beta):
    t = _logits(8, 13, seed=8)
    teacher = _teacher64(t, 4)
    # any student: the bucketed divergence does not exceed the dense one (data processing)
    s = _logits(8, 13, seed=9)
    assert (topk_generalized_jsd(s, teacher, beta) <= jsd64(s, t, beta) + 1e-12).all()
    assert (topk_generalized_jsd(s, teacher, beta) < jsd64(s, t, beta) - 1e-3).any()
    # a student whose tail is proportional to the teacher's: equality
    shift = torch.zeros(8, 13, dtype=torch.float64).scatter(-1, teacher.ids, _logits(8, 4, seed=10))
    s_prop = t + shift + _logits(8, 1, seed=11)
    torch.testing.assert_close(
        topk_generalized_jsd(s_prop, teacher, beta), jsd64(s_prop, t, beta), rtol=1e-10, atol=1e-12
    )
    # same distribution: zero
    assert topk_generalized_jsd(t + 2.0, teacher, beta).abs().max() < 1e-12


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gradcheck_float64(beta):
    s = _logits(3, 7, seed=12).requires_grad_(True)
    teacher = _teacher64(_logits(3, 7, seed=13), 3, 1.7)
    assert torch.autograd.gradcheck(lambda x: topk_generalized_jsd(x, teacher, beta, 1.7), (s,))
    # the closed-form backward used by the modules
    assert torch.autograd.gradcheck(lambda x: topk_student_divergence(x, teacher, beta, 1.7), (s,))


def _both_paths(s, teacher, beta, temperature):
    """Values and gradients of the autograd form and of the closed form (via the module path)."""
    x = s.clone().requires_grad_(True)
    auto = topk_generalized_jsd(x, teacher, beta, temperature)
    (auto_grad,) = torch.autograd.grad(auto.sum(), x)
    closed, closed_grad = topk_generalized_jsd_and_grad(s, teacher, beta, temperature)
    return auto.detach(), auto_grad, closed, closed_grad


@pytest.mark.parametrize("temperature", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("beta", BETAS)
def test_finite_for_large_logits_and_temperature_extremes(beta, temperature):
    s = _logits(16, 50, scale=30.0, seed=18, dtype=torch.float32)
    t = _logits(16, 50, scale=30.0, seed=19, dtype=torch.float32)
    teacher = topk_from_logits(t, 5, temperature)
    assert torch.isfinite(teacher.tail_log_mass).all()
    for out in _both_paths(s, teacher, beta, temperature):
        assert torch.isfinite(out).all()
    auto, _, closed, _ = _both_paths(s, teacher, beta, temperature)
    exact = topk_generalized_jsd(s.double(), topk_from_logits(t.double(), 5, temperature), beta, temperature)
    if temperature >= 1.0:
        ref = topk_jsd64(s, _teacher64(t, 5, temperature), beta, temperature)
        torch.testing.assert_close(exact, ref, rtol=1e-8, atol=1e-12)
    # at T = 1e-3 exp() underflows in the probability-space reference (0 * log 0 where the
    # log-space value is finite): the float64 run of the same code is the reference there
    for value in (auto, closed):
        assert (value >= 0).all()
        torch.testing.assert_close(value.double(), exact, rtol=2e-3, atol=1e-6 * temperature**2)


@pytest.mark.parametrize("beta", BETAS)
def test_banned_tokens_stay_finite_and_get_no_gradient(beta):
    t = _logits(4, 9, seed=20)
    s = _logits(4, 9, seed=21)
    t[:, 6:] = float("-inf")  # the teacher bans 6, 7, 8 ...
    s[:, 6:] = float("-inf")  # ... and so does the student
    # k = 3: the top 3 of the 6 allowed tokens; the same as the divergence on the allowed vocab
    teacher = topk_from_logits(t, 3)
    for out in _both_paths(s, teacher, beta, 1.0):
        assert torch.isfinite(out).all()
    auto, auto_grad, closed, closed_grad = _both_paths(s, teacher, beta, 1.0)
    ref = topk_jsd64(s[:, :6], _teacher64(t[:, :6], 3), beta, 1.0)
    torch.testing.assert_close(auto, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed, ref, rtol=1e-10, atol=1e-12)
    assert (auto_grad[:, 6:] == 0).all() and (closed_grad[:, 6:] == 0).all()
    # k = 8 > the 6 allowed tokens: -inf log-probs among the ids, an empty tail
    teacher = topk_from_logits(t, 8)
    assert torch.isneginf(teacher.log_probs).any()
    auto, auto_grad, closed, closed_grad = _both_paths(s, teacher, beta, 1.0)
    dense = generalized_jsd(s, t, beta)
    torch.testing.assert_close(auto, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed, dense, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(auto_grad).all() and (closed_grad[:, 6:] == 0).all()


def test_violated_support_is_huge_but_finite():
    t = _logits(3, 9, seed=22, dtype=torch.float32)
    teacher = topk_from_logits(t, 3)
    s = _logits(3, 9, seed=23, dtype=torch.float32)
    s_no_top = s.scatter(-1, teacher.ids[:, :1], float("-inf"))  # bans the teacher's top token
    s_no_tail = torch.full_like(s, float("-inf")).scatter(-1, teacher.ids, s.gather(-1, teacher.ids))
    for student, beta in ((s_no_top, 0.0), (s_no_tail, 0.0), (s_no_top, 0.5), (s_no_tail, 1.0)):
        for out in _both_paths(student, teacher, beta, 2.0):
            assert torch.isfinite(out).all()
        assert (_both_paths(student, teacher, beta, 2.0)[0] >= 0).all()
    _, _, closed, closed_grad = _both_paths(s_no_tail, teacher, 0.0, 1.0)
    assert (closed > 1e20).all()  # KL(P_t||P_s) is infinite
    outside = torch.ones_like(s, dtype=torch.bool).scatter(-1, teacher.ids, False)
    assert (closed_grad[outside] == 0).all()  # a banned logit gets no gradient, not 0/0
    # a teacher whose tail is empty (-inf) against a student with tail mass: reverse KL is infinite
    no_tail = TopKDistribution(teacher.ids, teacher.log_probs, torch.full((3,), float("-inf")))
    auto, auto_grad, closed, closed_grad = _both_paths(s, no_tail, 1.0, 1.0)
    assert (closed > 1e20).all() and torch.isfinite(closed_grad).all() and torch.isfinite(auto_grad).all()


def test_bad_teachers_are_rejected_with_both_shapes():
    s = _logits(4, 11, seed=26)
    good = topk_from_logits(_logits(4, 11, seed=27), 3)
    with pytest.raises(ValueError, match=r"\(4, 11\).*\(5, 3\)"):
        topk_generalized_jsd(s, topk_from_logits(_logits(5, 11), 3))
    with pytest.raises(ValueError, match=r"k=12 .* 11"):
        topk_generalized_jsd(s, TopKDistribution(torch.arange(12).repeat(4, 1), torch.zeros(4, 12), torch.zeros(4)))
    for bad_id in (11, -1):
        ids = good.ids.clone()
        ids[2, 1] = bad_id
        with pytest.raises(ValueError, match="outside the student vocab"):
            topk_generalized_jsd_and_grad(s, good._replace(ids=ids))
    ids = good.ids.clone()
    ids[1, 2] = ids[1, 0]
    with pytest.raises(ValueError, match="repeat"):
        topk_student_divergence(s.clone().requires_grad_(True), good._replace(ids=ids))
    with pytest.raises(ValueError, match="fields disagree"):
        topk_generalized_jsd(s, good._replace(tail_log_mass=torch.zeros(4, 1)))
    with pytest.raises(ValueError, match="integer"):
        topk_generalized_jsd(s, good._replace(ids=good.ids.double()))
    with pytest.raises(ValueError, match="beta"):
        topk_generalized_jsd(s, good, beta=1.5)

