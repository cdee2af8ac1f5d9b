import pytest
import torch
from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

from jsd_loss import JSDistillWithChunkedOutputLoss, KLDistillWithChunkedOutputLoss
from tests.reference import jsd64, log_softmax64


def _case(b=2, t=10, v=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=g) * 2
    te = torch.randn(b, t, v, generator=g) * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100
    labels[1, 7:] = -100
    return s, te, labels


@pytest.mark.parametrize("split", ["chunk", "tensor_split"])
@pytest.mark.parametrize("n_chunks", [1, 3, 4, 8])
def test_chunked_equals_reference_when_t_not_divisible(split, n_chunks):
    s, t, labels = _case()
    s = s.requires_grad_(True)
    s_chunks = list(getattr(s, split)(n_chunks, dim=1))
    t_chunks = list(getattr(t, split)(n_chunks, dim=1))
    loss = JSDistillWithChunkedOutputLoss(n_chunks, beta=0.4, temperature=2.0)(
        s_chunks, t_chunks, labels
    )
    keep = labels != -100
    s_ref = s.detach().double().requires_grad_(True)
    ref = jsd64(s_ref[keep], t[keep], 0.4, 2.0).sum() / keep.sum()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-7)


def test_all_masked_is_zero_not_nan():
    s, t, _ = _case(seed=1)
    s.requires_grad_(True)
    labels = torch.full((2, 10), -100)
    loss = KLDistillWithChunkedOutputLoss(4)(list(s.chunk(4, 1)), list(t.chunk(4, 1)), labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_drop_in_for_torchtune_forward_kl():
    # torchtune's loss is the cross-entropy H(P_t, P_s) = KL(P_t||P_s) + H(P_t): ours plus the
    # mean teacher entropy must reproduce it, chunk alignment and normalisation included.
    s, t, labels = _case(t=16, seed=2)
    s_chunks, t_chunks = list(s.chunk(8, 1)), list(t.chunk(8, 1))
    theirs = ForwardKLWithChunkedOutputLoss(8)(s_chunks, t_chunks, labels)
    ours = KLDistillWithChunkedOutputLoss(8, "forward")(s_chunks, t_chunks, labels)
    keep = labels != -100
    log_p = log_softmax64(t[keep])
    teacher_entropy = -(log_p.exp() * log_p).sum(-1).mean()
    torch.testing.assert_close(ours.double() + teacher_entropy, theirs.double(), rtol=1e-5, atol=1e-5)


def test_mismatched_chunks_are_rejected():
    s, t, labels = _case()
    fn = JSDistillWithChunkedOutputLoss(2)
    with pytest.raises(ValueError, match="cover 5 tokens"):
        fn([s[:, :5]], [t[:, :5]], labels)
    with pytest.raises(ValueError, match="teacher chunks"):
        fn(list(s.chunk(2, 1)), [t], labels)
    with pytest.raises(ValueError, match="vocabularies differ"):
        fn(list(s.chunk(2, 1)), list(t[..., :-1].chunk(2, 1)), labels)
