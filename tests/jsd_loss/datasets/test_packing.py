import pytest
import torch
import torch.nn.functional as F
from torchtune.modules.attention_utils import create_block_causal_mask

from jsd_loss.datasets import PackedRowsDataset, RowIndexedDataset, collate_packed_rows, padded_collate_sft_with_row_ids
from jsd_loss.losses import generalized_jsd
from jsd_loss.models.smollm2 import smollm2
from tests.conftest import TINY
from tests.jsd_loss.datasets.fakes import IGNORE, RowsDataset, random_rows

PAD = 0


def greedy_packs(lengths, max_seq_len):
    """Reference next-fit packing: the rows of each pack, in order."""
    packs, used = [[]], 0
    for row, n in enumerate(lengths):
        if used + n > max_seq_len:
            packs.append([])
            used = 0
        packs[-1].append(row)
        used += n
    return packs


def documents(pack):
    """Runs of equal row id in a pack: (row, tokens, labels, input_pos) lists, padding last as row -1."""
    out = []
    for t in range(len(pack["tokens"])):
        row = int(pack["row_ids"][t])
        if not out or out[-1][0] != row:
            out.append((row, [], [], []))
        for i, key in enumerate(("tokens", "labels", "input_pos"), 1):
            out[-1][i].append(int(pack[key][t]))
    return out


@pytest.mark.parametrize("max_seq_len", [1, 7, 32])
def test_every_row_once_in_order_with_its_tokens_labels_and_positions(max_seq_len):
    rows = random_rows(60, max_seq_len, seed=max_seq_len)
    ds = PackedRowsDataset(RowsDataset(rows), max_seq_len=max_seq_len, padding_idx=PAD)
    expected = greedy_packs([len(r["tokens"]) for r in rows], max_seq_len)
    assert len(ds) == len(expected)
    for index, want_rows in enumerate(expected):
        pack = ds[index]
        for key in ("tokens", "labels", "input_pos", "row_ids"):
            assert pack[key].shape == (max_seq_len,) and pack[key].dtype == torch.int64, key
        docs = documents(pack)
        padding = max_seq_len - sum(len(rows[r]["tokens"]) for r in want_rows)
        assert [d[0] for d in docs] == want_rows + ([-1] if padding else [])
        for row, tokens, labels, input_pos in docs:
            if row == -1:
                assert tokens == [PAD] * padding and labels == [IGNORE] * padding
                continue
            assert tokens == rows[row]["tokens"]
            assert labels == [IGNORE] + rows[row]["labels"][1:]  # the first label never crosses a boundary
            assert input_pos == list(range(len(tokens)))
        assert pack["seq_lens"].tolist() == [len(d[1]) for d in docs] and int(pack["seq_lens"].sum()) == max_seq_len


def test_packs_are_full_unless_the_next_row_did_not_fit():
    rows = random_rows(80, 12, seed=3)
    ds = PackedRowsDataset(RowsDataset(rows), max_seq_len=40)
    first_rows = [int(ds[i]["row_ids"][0]) for i in range(len(ds))]
    for i in range(len(ds) - 1):
        used = int((ds[i]["row_ids"] != -1).sum())
        assert used + len(rows[first_rows[i + 1]]["tokens"]) > 40
    assert len(ds) < len(rows) / 3  # rows of ~6 tokens: several per pack


def test_mask_is_block_causal_within_each_document_and_the_padding():
    rows = random_rows(12, 8, seed=1)
    ds = PackedRowsDataset(RowsDataset(rows), max_seq_len=16)
    batch = collate_packed_rows([ds[0], ds[1], ds[2]])
    assert sorted(batch) == ["input_pos", "labels", "mask", "row_ids", "tokens"]
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (3, 16, 16)
    for b in range(3):
        row_ids = batch["row_ids"][b].tolist()
        hand = torch.tensor([[row_ids[q] == row_ids[k] and k <= q for k in range(16)] for q in range(16)])
        assert torch.equal(batch["mask"][b], hand)
        assert any(row_ids[t] != row_ids[t + 1] for t in range(15))  # more than one document
    torch.testing.assert_close(batch["mask"], create_block_causal_mask([ds[i]["seq_lens"] for i in range(3)]))
    for key in ("tokens", "labels", "input_pos", "row_ids"):
        assert torch.equal(batch[key], torch.stack([ds[i][key] for i in range(3)]))


def test_bad_rows_and_lengths_are_refused():
    with pytest.raises(ValueError, match="row 1 has 9 tokens, more than max_seq_len=8"):
        PackedRowsDataset(RowsDataset(random_rows(1, 8) + [{"tokens": [5] * 9, "labels": [5] * 9}]), max_seq_len=8)
    with pytest.raises(ValueError, match="row 0 has no tokens"):
        PackedRowsDataset(RowsDataset([{"tokens": [], "labels": []}]), max_seq_len=8)
    with pytest.raises(ValueError, match="row 0 has 2 tokens but 1 labels"):
        PackedRowsDataset(RowsDataset([{"tokens": [4, 5], "labels": [5]}]), max_seq_len=8)
    for bad in (None, 0, 8.0):
        with pytest.raises(ValueError, match="packing needs max_seq_len, a positive int"):
            PackedRowsDataset(RowsDataset(random_rows(2, 8)), max_seq_len=bad)


def _shifted(labels):
    """The recipe's shift: position t predicts label t + 1."""
    return torch.cat([labels[..., 1:], torch.full_like(labels[..., :1], IGNORE)], dim=-1)


def _per_token_losses(student, teacher, batch):
    """{(row, position in row): (CE, JSD)} at every trained position of a batch."""
    kwargs = {k: batch[k] for k in ("mask", "input_pos") if k in batch}
    with torch.no_grad():
        logits, teacher_logits = student(batch["tokens"], **kwargs), teacher(batch["tokens"], **kwargs)
    labels = _shifted(batch["labels"])
    positions = batch.get("input_pos", torch.arange(labels.shape[1]).expand_as(labels))
    out = {}
    for b, t in (labels != IGNORE).nonzero().tolist():
        ce = F.cross_entropy(logits[b, t], labels[b, t])
        jsd = generalized_jsd(logits[b, t][None], teacher_logits[b, t][None], beta=0.5)[0]
        key = (int(batch["row_ids"][b, t]), int(positions[b, t]))
        assert key not in out and int(batch["row_ids"][b, t + 1]) == key[0]  # never across rows
        out[key] = (ce.item(), jsd.item())
    return out


# torchtune's RMSNorm computes in float32 (and warns of the float64 weight); the rest is float64
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_packed_per_token_losses_equal_each_row_run_alone_unpadded():
    torch.manual_seed(0)
    student, teacher = smollm2(**TINY).double().eval(), smollm2(**TINY).double().eval()
    with torch.no_grad():
        teacher.tok_embeddings.weight.mul_(20)  # peaked teacher distributions
    rows = random_rows(14, 20, seed=5, vocab=TINY["vocab_size"])
    ds = PackedRowsDataset(RowsDataset(rows), max_seq_len=40)
    packed = _per_token_losses(student, teacher, collate_packed_rows([ds[i] for i in range(len(ds))]))

    alone = {}  # the reference: each row alone, no padding, no mask, no positions
    for row, r in enumerate(rows):
        tokens, labels = torch.tensor([r["tokens"]]), _shifted(torch.tensor([r["labels"]]))
        with torch.no_grad():
            logits, teacher_logits = student(tokens), teacher(tokens)
        for (t,) in (labels[0] != IGNORE).nonzero().tolist():
            ce = -torch.log_softmax(logits[0, t], -1)[labels[0, t]]
            alone[(row, t)] = (ce.item(), generalized_jsd(logits[0, t][None], teacher_logits[0, t][None])[0].item())
    assert len(ds) < len(rows) and len(alone) > 50
    assert sorted(packed) == sorted(alone)
    for key, (ce, jsd) in alone.items():
        assert packed[key][0] == pytest.approx(ce, rel=1e-9, abs=1e-12), key
        assert packed[key][1] == pytest.approx(jsd, rel=1e-9, abs=1e-12), key
    assert 0 < min(j for _, j in alone.values()) and max(j for _, j in alone.values()) < 0.6932

    # the unpacked, padded batch names the same positions by its row_ids
    unpacked = padded_collate_sft_with_row_ids([RowIndexedDataset(RowsDataset(rows))[i] for i in range(len(rows))],
                                               padding_idx=PAD)
    padded = _per_token_losses(student, teacher, unpacked)
    assert sorted(padded) == sorted(alone)
    for key, (ce, jsd) in alone.items():
        assert padded[key] == pytest.approx((ce, jsd), rel=1e-9, abs=1e-12), key
