"""Several teachers fused (mixture, product, min_ce): every loss form against a float64
reference written here from the definitions, min_ce on hand-built teachers, the fused-linear
form without a (tokens, vocab) tensor, and the edges (one teacher, identical teachers,
temperature extremes, bf16, rows without labels)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jsd_loss import DistillLoss, DistillWithChunkedOutputLoss, FusedLinearDivergenceLoss, JSDivergence
from jsd_loss.losses import FUSIONS, FusedTeachers, check_fusion, fuse_logits
from tests.jsd_loss.losses.test_divergences import CASES
from tests.reference import divergence_probs64, log_softmax64

FUSION_CASES = {"jsd": (lambda: JSDivergence(0.3), "jsd", dict(beta=0.3)),
                **{k: CASES[k] for k in ("ab_general", "skew_reverse", "tv")}}
WEIGHTS = (1.0, 2.5, 1.5)  # unnormalised, unequal
T = 1.7


def _teachers(b=3, t=6, v=11, widths=(5, 7, 4), seed=0, dtype=torch.float64):
    """Student hidden states and weight, and three teachers of different widths."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, 6, generator=g, dtype=torch.float64)
    w = torch.randn(v, 6, generator=g, dtype=torch.float64) * 0.7
    th = [torch.randn(b, t, d, generator=g, dtype=torch.float64) for d in widths]
    tw = [torch.randn(v, d, generator=g, dtype=torch.float64) * 0.4 for d in widths]
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100
    labels[-1, -1] = -100
    return h.to(dtype), w.to(dtype), [x.to(dtype) for x in th], [x.to(dtype) for x in tw], labels


def reference_probs64(logits, weights, fusion, temperature, labels):
    """The fused teacher distribution (B, T, V), float64, from the definitions."""
    logits = [z.double() for z in logits]
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    if fusion == "mixture":
        return sum(wi * log_softmax64(z, temperature).exp() for wi, z in zip(w, logits))
    if fusion == "product":
        log_p = sum(wi * log_softmax64(z, temperature) for wi, z in zip(w, logits))
        return (log_p - torch.logsumexp(log_p, -1, keepdim=True)).exp()
    keep = labels != -100
    rows = []
    for b in range(labels.size(0)):  # per sequence, the teacher of lowest summed CE; ties: the first
        ces = [-(log_softmax64(z[b])[keep[b]].gather(-1, labels[b][keep[b]].unsqueeze(-1))).sum().item()
               for z in logits]
        rows.append(log_softmax64(logits[ces.index(min(ces))][b], temperature).exp())
    return torch.stack(rows)


def _value_and_grads(fn, h, w):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    value = fn(h, w)
    value.backward()
    return value, h.grad, w.grad


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("case", FUSION_CASES)
def test_fused_teachers_match_the_float64_reference_in_every_form(fusion, case):
    make, name, params = FUSION_CASES[case]
    h, w, th, tw, labels = _teachers(seed=1)
    keep = labels != -100
    t_logits = [a @ b.t() for a, b in zip(th, tw)]
    p = reference_probs64(t_logits, WEIGHTS, fusion, T, labels)
    if fusion == "min_ce":  # the case must exercise a choice: not every sequence picks one teacher
        picks = {min(range(3), key=lambda i: -(torch.log_softmax(t_logits[i][b], -1)[keep[b]]
                                               .gather(-1, labels[b][keep[b]].unsqueeze(-1))).sum())
                 for b in range(3)}
        assert len(picks) > 1, picks

    def reference(h, w):
        q = log_softmax64(h @ w.t(), T).exp()
        return (divergence_probs64(name, q[keep], p[keep], **params) * T**2).mean()

    token, chunked = DistillLoss(make(), T), DistillWithChunkedOutputLoss(make(), 3, T)
    fused = FusedLinearDivergenceLoss(make(), T, chunk_size=4)
    forms = {
        "per-token": lambda h, w: token(h @ w.t(), fuse_logits(t_logits, WEIGHTS, fusion, T, labels), labels),
        "chunked": lambda h, w: chunked(list((h @ w.t()).chunk(3, 1)), fuse_logits(
            [list(z.chunk(3, 1)) for z in t_logits], WEIGHTS, fusion, T, labels), labels),
        "fused-linear": lambda h, w: fused(h, w, FusedTeachers(th, tw, WEIGHTS, fusion), None, labels),
    }
    ref = _value_and_grads(reference, h, w)
    for form, fn in forms.items():
        for got, want in zip(_value_and_grads(fn, h, w), ref):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m: f"{form}: {m}")


def test_min_ce_picks_the_teacher_with_the_lowest_cross_entropy_on_hand_built_teachers():
    """Teacher A is sure of row 0's labels, B of row 1's; row 2 has no label (the first
    teacher), row 3 ties (the first teacher). Logits path and fused-linear path agree."""
    v = 5
    labels = torch.tensor([[1, 2, 3], [4, 0, 1], [-100, -100, -100], [2, 2, 2]])
    a = torch.zeros(4, 3, v)
    b = torch.zeros(4, 3, v)
    a[0].scatter_(-1, labels[0].unsqueeze(-1), 6.0)  # A: CE ~0 on row 0; B: log 5 per token
    b[1].scatter_(-1, labels[1].unsqueeze(-1), 6.0)
    a[2], b[2] = torch.randn(3, v), torch.randn(3, v)
    b[3] = a[3] = torch.randn(3, v)
    a[1, :, 0] = -3.0  # A is wrong on row 1 (its label 0 at position 1 gets little mass)
    fused = fuse_logits([a, b], [0.1, 0.9], "min_ce", labels=labels)
    for row, teacher in enumerate([a, b, a, a]):
        assert torch.equal(fused[row], teacher[row]), row
    # fused-linear: hidden states are the logits, the output weights the identity
    eye = torch.eye(v)
    teachers = FusedTeachers([a, b], [eye, eye], [0.1, 0.9], "min_ce").for_tokens(labels, -100, v, chunk_size=2)
    assert teachers.choice.view(4, 3).tolist() == [[0] * 3, [1] * 3, [0] * 3, [0] * 3]
    assert torch.equal(teachers.logits(torch.arange(12), 1.0).view(4, 3, v), fused)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_identical_teachers_fuse_to_the_teacher_in_every_form(fusion):
    h, w, th, tw, labels = _teachers(seed=2, widths=(5, 5, 5))
    z = th[0] @ tw[0].t()
    for temperature in (0.6, 2.0):
        torch.testing.assert_close(fuse_logits([z, z], [1.0, 3.0], fusion, temperature, labels).log_softmax(-1),
                                   z.log_softmax(-1), rtol=1e-12, atol=1e-12)
        loss = FusedLinearDivergenceLoss(JSDivergence(0.5), temperature, chunk_size=5)
        one = loss(h, w, th[0], tw[0], labels)
        two = loss(h, w, FusedTeachers([th[0], th[0]], [tw[0], tw[0]], [2.0, 1.0], fusion), None, labels)
        torch.testing.assert_close(two, one, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_teacher_is_returned_unchanged(fusion):
    h, w, th, tw, labels = _teachers(seed=3, dtype=torch.float32)
    z = (th[0] @ tw[0].t()).bfloat16()
    assert fuse_logits([z], [0.3], fusion, 2.0, labels) is z
    chunks = list(z.chunk(2, 1))
    assert fuse_logits([chunks], [1.0], fusion, 2.0, labels) is chunks
    loss = FusedLinearDivergenceLoss(JSDivergence(0.5), 2.0, chunk_size=5)
    assert torch.equal(loss(h, w, FusedTeachers([th[0]], [tw[0]], [0.3], fusion), None, labels),
                       loss(h, w, th[0], tw[0], labels))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("temperature", [1e-3, 1.0, 1e3])
def test_fusion_is_finite_in_float32_for_bf16_teachers_extreme_temperatures_and_unlabelled_rows(fusion, temperature):
    _, _, th, tw, labels = _teachers(seed=4, dtype=torch.float32)
    logits = [((a @ b.t()) * 30).bfloat16() for a, b in zip(th, tw)]
    labels[1] = -100  # a row with no label at all
    fused = fuse_logits(logits, WEIGHTS, fusion, temperature, labels)
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    p = torch.softmax(fused / temperature, -1)
    assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
    if fusion == "min_ce":
        assert torch.equal(fused[1], logits[0][1].float())


class _Shapes(TorchDispatchMode):
    """Records the element count of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_linear_multi_teacher_loss_never_builds_a_tokens_by_vocab_tensor(fusion):
    h, w, th, tw, labels = _teachers(b=4, t=16, v=97, widths=(8, 12, 6), seed=5, dtype=torch.float32)
    h, w = h.requires_grad_(True), w.requires_grad_(True)
    loss = FusedLinearDivergenceLoss(JSDivergence(0.5), 1.5, chunk_size=8, return_ce=True)
    with _Shapes() as shapes:
        kd, ce = loss(h, w, FusedTeachers(th, tw, WEIGHTS, fusion), None, labels)
        (kd + ce).backward()
    tokens_by_vocab = 4 * 16 * 97
    assert 8 * 97 <= shapes.largest < tokens_by_vocab / 4, shapes.largest


def test_bad_fusions_and_teachers_are_refused():
    with pytest.raises(ValueError, match="teacher fusion must be one of mixture, product, min_ce, got 'mean'"):
        check_fusion("mean", [1.0])
    with pytest.raises(ValueError, match="teacher weights must be finite positive numbers"):
        check_fusion("mixture", [1.0, 0.0])
    z = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="got the logits of 2 teachers for 3 weights"):
        fuse_logits([z, z], [1, 1, 1])
    with pytest.raises(ValueError, match="min_ce fusion needs the labels"):
        fuse_logits([z, z], [1, 1], "min_ce")
    teachers = FusedTeachers([z, z], [torch.eye(5), torch.eye(6, 5)], [1, 1])
    with pytest.raises(ValueError, match="teacher 1 has vocab size 6, the student 5"):
        teachers.for_tokens(torch.zeros(1, 2, dtype=torch.long), -100, 5, 4)
