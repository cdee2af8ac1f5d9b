"""Feature losses against float64 references written from the definitions and hand-computed cases."""

import math

import pytest
import torch

from jsd_loss.losses import FEATURE_LOSSES, FeatureLoss, feature_loss, feature_token_loss


def reference64(student, teacher, kind):
    """Per-token loss, float64, one token at a time with Python sums."""
    s, t = student.double().reshape(-1, student.shape[-1]), teacher.double().reshape(-1, teacher.shape[-1])
    out = []
    for a, b in zip(s.tolist(), t.tolist()):
        d = len(a)
        mse = sum((x - y) ** 2 for x, y in zip(a, b)) / d
        if kind == "mse":
            out.append(mse)
        elif kind == "normalized_mse":
            out.append(mse / (sum(y * y for y in b) / d + 1e-6))
        else:
            norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
            out.append(1.0 - sum(x * y for x, y in zip(a, b)) / max(norms, 1e-6))
    return torch.tensor(out, dtype=torch.float64).reshape(student.shape[:-1])


def test_hand_computed_token():
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 5.0]])
    # mse (9 + 1) / 2 = 5; teacher mean square 25 / 2; cosine 20 / (5 * 5)
    assert feature_token_loss(s, t, "mse").item() == pytest.approx(5.0)
    assert feature_token_loss(s, t, "normalized_mse").item() == pytest.approx(5.0 / 12.5, rel=1e-6)
    assert feature_token_loss(s, t, "cosine").item() == pytest.approx(0.2, rel=1e-6)


@pytest.mark.parametrize("kind", FEATURE_LOSSES)
def test_masked_mean_and_sum_equal_the_reference(kind):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 16, generator=gen) * 3
    teacher = torch.randn(3, 5, 16, generator=gen)
    mask = torch.rand(3, 5, generator=gen) > 0.4
    ref = reference64(student, teacher, kind)
    mean = ref[mask].sum() / mask.sum()
    assert feature_loss(student, teacher, mask, kind).item() == pytest.approx(mean.item(), rel=1e-5)
    assert feature_loss(student, teacher, mask, kind, "sum").item() == pytest.approx(ref[mask].sum().item(), rel=1e-5)
    per_token = feature_loss(student, teacher, mask, kind, "none")
    torch.testing.assert_close(per_token.double(), torch.where(mask, ref, 0.0), rtol=1e-5, atol=1e-6)
    assert feature_loss(student, teacher, None, kind).item() == pytest.approx(ref.mean().item(), rel=1e-5)
    assert FeatureLoss(kind)(student, teacher, mask).item() == feature_loss(student, teacher, mask, kind).item()
    # (N, D) features and (N,) masks too
    flat = feature_loss(student.reshape(15, 16), teacher.reshape(15, 16), mask.reshape(15), kind)
    assert flat.item() == pytest.approx(mean.item(), rel=1e-5)


@pytest.mark.parametrize("kind", FEATURE_LOSSES)
def test_gradient_equals_the_float64_reference(kind):
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(2, 4, 8, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 4, 8, generator=gen)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    feature_loss(student, teacher, mask, kind).backward()
    s64 = student.detach().double().requires_grad_()
    t = teacher.double()
    if kind == "cosine":
        per = 1 - torch.nn.functional.cosine_similarity(s64, t, dim=-1)
    else:
        per = ((s64 - t) ** 2).mean(-1)
        if kind == "normalized_mse":
            per = per / ((t**2).mean(-1) + 1e-6)
    (per[mask].sum() / mask.sum()).backward()
    torch.testing.assert_close(student.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", FEATURE_LOSSES)
def test_bf16_inputs_and_autocast_give_float32_math(kind):
    gen = torch.Generator().manual_seed(2)
    student = (torch.randn(2, 6, 32, generator=gen) * 10).bfloat16()
    teacher = (torch.randn(2, 6, 32, generator=gen) * 10).bfloat16()
    ref = reference64(student, teacher, kind).mean().item()
    plain = feature_loss(student, teacher, kind=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = feature_loss(student, teacher, kind=kind)
    for value in (plain, cast):
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(ref, rel=1e-5)  # bf16 math would be off by ~1e-2


@pytest.mark.parametrize("kind", FEATURE_LOSSES)
def test_zero_vectors_are_finite_in_value_and_gradient(kind):
    student = torch.zeros(1, 3, 8, requires_grad=True)
    teacher = torch.zeros(1, 3, 8)
    teacher[0, 2] = 1.0
    loss = feature_loss(student, teacher, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    both_zero = feature_loss(student[:, :2], teacher[:, :2], kind=kind)
    assert both_zero.item() == (1.0 if kind == "cosine" else 0.0)


def test_no_kept_token_is_zero():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert feature_loss(s, t, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_bad_arguments_are_refused():
    s = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="feature loss kind must be one of mse, cosine, normalized_mse, got 'l1'"):
        feature_loss(s, s, kind="l1")
    with pytest.raises(ValueError, match=r"student features \(2, 3, 4\) and teacher features \(2, 3, 5\) differ"):
        feature_loss(s, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"mask \(2, 4\) does not match the features' tokens \(2, 3\)"):
        feature_loss(s, s, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        FeatureLoss("mse", reduction="max")
    with pytest.raises(ValueError, match="feature loss kind"):
        FeatureLoss("l2")
