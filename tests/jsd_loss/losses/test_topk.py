"""TopKDistribution and topk_from_logits, against float64 definitions."""

import math

import pytest
import torch

from jsd_loss import TopKDistribution, topk_from_logits
from tests.reference import bucket_probs64, softmax64

TEMPERATURES = [0.5, 1.0, 4.0]


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def test_fields_and_helpers():
    assert TopKDistribution._fields == ("ids", "log_probs", "tail_log_mass")
    dist = topk_from_logits(_logits(2, 6, 11, seed=1), 4)
    ids, log_probs, tail = dist
    assert ids.dtype == torch.int64 and log_probs.dtype == torch.float64
    assert dist.k == 4 and dist.shape == (2, 6) and tail.shape == (2, 6)
    flat = dist.flatten()
    assert flat.ids.shape == (12, 4) and flat.tail_log_mass.shape == (12,)
    torch.testing.assert_close(flat.log_probs[7], dist.log_probs[1, 1])
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 2] = mask[0, 5] = True
    picked = dist.select(mask)
    assert picked.ids.shape == (2, 4) and torch.equal(picked.ids[1], dist.ids[1, 2])
    assert torch.equal(flat.select(torch.tensor([8])).tail_log_mass, tail[1, 2:3])
    parts = dist.split([1, 3, 2], dim=1)
    assert [p.shape for p in parts] == [(2, 1), (2, 3), (2, 2)]
    assert torch.equal(parts[1].log_probs, log_probs[:, 1:4]) and parts[2].k == 4
    assert torch.equal(dist.split([2, 4], dim=-1)[1].ids, ids[:, 2:])  # -1: the last token dim
    moved = dist.to("cpu")
    assert isinstance(moved, TopKDistribution) and moved.ids is ids


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("k", [1, 5, 16])
def test_topk_from_logits_matches_the_definition(k, temperature):
    logits = _logits(7, 17, seed=2, dtype=torch.float32)
    dist = topk_from_logits(logits, k, temperature)
    p = softmax64(logits, temperature)
    assert dist.log_probs.dtype == torch.float32 and dist.ids.dtype == torch.int64
    assert torch.equal(dist.ids, p.argsort(-1, descending=True)[:, :k])
    torch.testing.assert_close(dist.log_probs.double(), p.gather(-1, dist.ids).log(), rtol=0, atol=1e-5)
    rest = bucket_probs64(p, dist.ids)[:, -1]
    torch.testing.assert_close(dist.tail_log_mass.double(), rest.log(), rtol=1e-5, atol=1e-5)
    d64 = topk_from_logits(logits.double(), k, temperature)
    total = d64.log_probs.exp().sum(-1) + d64.tail_log_mass.exp()
    torch.testing.assert_close(total, torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-14)


def test_topk_from_logits_full_vocab_has_no_tail():
    dist = topk_from_logits(_logits(3, 9, seed=3), 9)
    assert torch.isneginf(dist.tail_log_mass).all()
    torch.testing.assert_close(dist.log_probs.exp().sum(-1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_from_logits_tail_is_stable_for_extreme_logits(dtype):
    v = 8
    logits = torch.full((3, v), -1e4, dtype=dtype)
    logits[:, 0] = 1e4
    logits[1, 1] = 1e4 - 3.0
    logits[2, 2:] = float("-inf")  # row 2: the tail holds banned tokens only (besides id 1)
    dist = topk_from_logits(logits, 1)
    # 1 - exp(log p_top) is exactly 0 here: log(1 - sum p) would give -inf for rows 0 and 1
    assert torch.isfinite(dist.tail_log_mass[:2]).all()
    tol = 1e-9 if dtype == torch.float64 else 4e-3  # float32 spacing near 2e4 is 2e-3
    assert abs(dist.tail_log_mass[0].item() - (-2e4 + math.log(v - 1))) < tol
    # row 1: e^-3 / (1 + e^-3), the e^-2e4 terms vanish
    assert abs(dist.tail_log_mass[1].item() - (-3.0 - math.log1p(math.exp(-3.0)))) < 1e-6
    assert abs(dist.tail_log_mass[2].item() - (-2e4)) < tol  # only token 1, at -1e4, is left
    # k = V - 1: the tail is the one remaining token; it is -inf when that token is banned
    dist = topk_from_logits(logits, v - 1)
    assert torch.isfinite(dist.tail_log_mass[:2]).all()
    assert abs(dist.tail_log_mass[0].item() - (-2e4)) < tol
    assert torch.isneginf(dist.tail_log_mass[2])
    assert not torch.isnan(dist.log_probs).any()


def test_bad_builder_arguments():
    logits = _logits(2, 6)
    for k in (0, 7):
        with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
            topk_from_logits(logits, k)
    with pytest.raises(ValueError, match="temperature"):
        topk_from_logits(logits, 2, temperature=0.0)

