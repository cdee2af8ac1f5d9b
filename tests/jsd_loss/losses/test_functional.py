import math

import pytest
import torch
import torch.nn.functional as F

from jsd_loss.losses import generalized_jsd, generalized_jsd_and_grad, kl_divergence
from tests.reference import jsd64, softmax64


def _logits(n=6, v=11, scale=3.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_float64_definition(beta, temperature):
    s, t = _logits(seed=1), _logits(seed=2)
    got = generalized_jsd(s, t, beta, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), jsd64(s, t, beta, temperature), rtol=1e-5, atol=1e-6
    )


def test_float64_inputs_stay_float64_and_exact():
    s, t = _logits(seed=3, dtype=torch.float64), _logits(seed=4, dtype=torch.float64)
    got = generalized_jsd(s, t, 0.3)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, jsd64(s, t, 0.3), rtol=1e-12, atol=1e-14)


def test_mixture_is_of_probabilities_not_log_probabilities():
    # a mixture built by averaging log-probabilities (a known bug) gives a different value
    s, t = _logits(seed=5), _logits(seed=6)
    q, p = softmax64(s), softmax64(t)
    geo = torch.softmax(0.3 * torch.log(p) + 0.7 * torch.log(q), -1)
    wrong = 0.3 * (p * torch.log(p / geo)).sum(-1) + 0.7 * (q * torch.log(q / geo)).sum(-1)
    got = generalized_jsd(s, t, 0.3).double()
    assert (got - wrong).abs().max() > 1e-3
    torch.testing.assert_close(got, jsd64(s, t, 0.3), rtol=1e-5, atol=1e-6)


def test_endpoints_are_forward_and_reverse_kl():
    s, t = _logits(seed=7), _logits(seed=8)
    log_q, log_p = F.log_softmax(s.double(), -1), F.log_softmax(t.double(), -1)
    fkl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    rkl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0).double(), fkl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0).double(), rkl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_divergence(s, t, "forward").double(), fkl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_divergence(s, t, "reverse").double(), rkl, rtol=1e-5, atol=1e-6)


def test_normalised_jsd_tends_to_kl_at_both_ends():
    s = _logits(seed=9, scale=1.0, dtype=torch.float64)
    t = _logits(seed=10, scale=1.0, dtype=torch.float64)
    fkl, rkl = jsd64(s, t, 0.0), jsd64(s, t, 1.0)
    fwd_err, rev_err = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        fwd_err.append((generalized_jsd(s, t, eps) / eps - fkl).abs().max().item())
        rev_err.append((generalized_jsd(s, t, 1 - eps) / eps - rkl).abs().max().item())
    for err, kl in ((fwd_err, fkl), (rev_err, rkl)):
        assert err[0] > err[1] > err[2]
        assert err[2] < 1e-2 * kl.min().item()  # the error is O(beta)
        assert err[2] < 0.2 * err[1] < 0.04 * err[0]


def test_zero_iff_equal():
    s = _logits(seed=11)
    for beta in (0.0, 0.5, 0.8, 1.0):
        assert generalized_jsd(s, s.clone(), beta).abs().max() < 1e-6
        # a per-row constant shift leaves the distribution unchanged
        assert generalized_jsd(s, s + 5.0, beta).abs().max() < 1e-5
        assert (generalized_jsd(s, _logits(seed=12), beta) > 1e-4).all()


def test_symmetric_and_bounded_by_ln2_at_half():
    s, t = _logits(seed=13), _logits(seed=14)
    torch.testing.assert_close(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5))
    # disjoint, nearly one-hot distributions approach the bound ln 2 from below
    a = torch.full((2, 8), -60.0)
    b = torch.full((2, 8), -60.0)
    a[:, 0] = 60.0
    b[:, 1] = 60.0
    val = generalized_jsd(a, b, 0.5)
    assert (val <= math.log(2) + 1e-6).all() and (val > math.log(2) - 1e-4).all()
    assert (generalized_jsd(_logits(seed=15, scale=30.0), t, 0.5) <= math.log(2) + 1e-6).all()


def test_bf16_inputs_are_nonnegative_and_float32():
    base = _logits(n=256, v=64, seed=16)
    s = base.to(torch.bfloat16)
    t = (base + 1e-3 * _logits(n=256, v=64, seed=17)).to(torch.bfloat16)
    for beta in (0.0, 0.5, 1.0):
        out = generalized_jsd(s, t, beta)
        assert out.dtype == torch.float32
        assert (out >= 0).all()
        torch.testing.assert_close(out.double(), jsd64(s, t, beta), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 10.0])
def test_temperature_extremes(temperature):
    s, t = _logits(seed=18, scale=20.0), _logits(seed=19, scale=20.0)
    for beta in (0.0, 0.5, 1.0):
        out = generalized_jsd(s, t, beta, temperature)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(
            out.double(), jsd64(s, t, beta, temperature), rtol=1e-4, atol=1e-4
        )


def test_banned_vocab_entries_stay_finite():
    s, t = _logits(seed=20), _logits(seed=21)
    s = s.clone().requires_grad_(True)
    banned = torch.zeros_like(s, dtype=torch.bool)
    banned[:, [0, 3]] = True
    banned[2, 5] = True
    t_in = t.masked_fill(banned, float("-inf"))
    for beta in (0.0, 0.5, 1.0):
        s_in = s.masked_fill(banned, float("-inf"))
        out = generalized_jsd(s_in, t_in, beta)
        assert torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(out.sum(), s)
        assert torch.isfinite(grad).all()
        assert (grad[banned] == 0).all()
        # same value as computing on the allowed vocab only
        for row in range(s.shape[0]):
            keep = ~banned[row]
            ref = jsd64(s[row, keep][None].detach(), t[row, keep][None], beta)
            torch.testing.assert_close(out[row].double(), ref[0], rtol=1e-5, atol=1e-6)
        loss, g = generalized_jsd_and_grad(s_in.detach(), t_in, beta)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        assert (g[banned] == 0).all()
    # teacher bans a token, student does not: the JSD stays bounded
    t_only = t.masked_fill(banned, float("-inf"))
    assert (generalized_jsd(s.detach(), t_only, 0.5) <= math.log(2)).all()


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_gradcheck_float64(beta):
    s = _logits(n=3, v=5, seed=22, dtype=torch.float64).requires_grad_(True)
    t = _logits(n=3, v=5, seed=23, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: generalized_jsd(a, b, beta, 1.7), (s, t))


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_closed_form_gradient_matches_autograd_of_definition(beta, temperature):
    s = _logits(seed=24, dtype=torch.float64).requires_grad_(True)
    t = _logits(seed=25, dtype=torch.float64)
    ref = jsd64(s, t, beta, temperature)
    (ref_grad,) = torch.autograd.grad(ref.sum(), s)
    loss, grad = generalized_jsd_and_grad(s.detach(), t, beta, temperature)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


def test_bad_arguments():
    s = _logits()
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, s, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        generalized_jsd(s, s, 0.5, 0.0)
    with pytest.raises(ValueError, match="vocabularies differ"):
        generalized_jsd(s, _logits(v=12), 0.5)
    with pytest.raises(ValueError, match="direction"):
        kl_divergence(s, s, "sideways")
