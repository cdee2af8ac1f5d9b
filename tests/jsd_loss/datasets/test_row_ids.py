import torch

from jsd_loss.datasets import PAD_ROW_ID, RowIndexedDataset, padded_collate_sft_with_row_ids
from tests.jsd_loss.datasets.fakes import RowsDataset, random_rows


def test_samples_carry_their_index_and_are_otherwise_unchanged():
    rows = random_rows(5, 9)
    ds = RowIndexedDataset(RowsDataset(rows))
    assert len(ds) == 5
    for i in range(5):
        assert ds[i] == {**rows[i], "row_id": i}


def test_row_ids_cover_each_samples_tokens_and_padding_is_minus_one():
    batch = [{"tokens": [5, 6, 7], "labels": [-100, 6, 7], "row_id": 11},
             {"tokens": [8], "labels": [8], "row_id": 0},
             {"tokens": [9, 10], "labels": [9, 10], "row_id": 4}]
    out = padded_collate_sft_with_row_ids(batch, padding_idx=2, ignore_idx=-100)
    assert sorted(out) == ["labels", "row_ids", "tokens"]
    assert PAD_ROW_ID == -1 and out["row_ids"].dtype == torch.int64
    assert out["row_ids"].tolist() == [[11, 11, 11], [0, -1, -1], [4, 4, -1]]
    assert out["tokens"].tolist() == [[5, 6, 7], [8, 2, 2], [9, 10, 2]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100], [9, 10, -100]]
