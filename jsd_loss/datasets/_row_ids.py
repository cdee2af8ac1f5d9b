"""Which dataset row every token of a batch came from: ``row_ids`` on unpacked batches.

A batch's ``row_ids`` is an int64 tensor shaped like its ``tokens``, holding for each position
the index (in the dataset as instantiated, before any packing) of the row the token came from,
and :data:`PAD_ROW_ID` where the position is padding. Packed batches carry the same key (see
:class:`~jsd_loss.datasets.PackedRowsDataset`).
"""

from typing import Any, Dict, List

import torch
from torch.utils.data import Dataset
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, padded_collate_sft

PAD_ROW_ID = -1


class RowIndexedDataset(Dataset):
    """
    ``ds`` whose samples also carry ``"row_id"``: their index in ``ds``.

    Args:
        ds (Dataset): a map-style dataset of ``{"tokens", "labels"}`` samples.
    """

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {**self.ds[index], "row_id": index}


def padded_collate_sft_with_row_ids(
    batch: List[Dict[str, Any]],
    padding_idx: int = 0,
    ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX,
) -> Dict[str, torch.Tensor]:
    """
    torchtune's :func:`~torchtune.data.padded_collate_sft` (right-padded to the longest sample)
    plus ``row_ids``.

    Args:
        batch (List[Dict[str, Any]]): samples of ``{"tokens", "labels", "row_id"}``
            (see :class:`RowIndexedDataset`).
        padding_idx (int): padding token id. Default: 0
        ignore_idx (int): label of padding positions. Default: -100

    Returns:
        Dict[str, torch.Tensor]: ``tokens`` and ``labels`` (B, T) and ``row_ids`` (B, T) int64:
        each sample's ``row_id`` over its tokens, :data:`PAD_ROW_ID` over the padding.

    Example:
        >>> batch = [{"tokens": [1, 2, 3], "labels": [4, 5, 6], "row_id": 7},
        ...          {"tokens": [8], "labels": [9], "row_id": 2}]
        >>> padded_collate_sft_with_row_ids(batch)["row_ids"]
        tensor([[ 7,  7,  7],
                [ 2, -1, -1]])
    """
    collated = padded_collate_sft(batch, padding_idx=padding_idx, ignore_idx=ignore_idx)
    row_ids = torch.full(collated["tokens"].shape, PAD_ROW_ID, dtype=torch.long)
    for i, sample in enumerate(batch):
        row_ids[i, : len(sample["tokens"])] = sample["row_id"]
    return {**collated, "row_ids": row_ids}
