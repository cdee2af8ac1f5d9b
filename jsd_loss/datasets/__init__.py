from jsd_loss.datasets._dolly import (
    DEFAULT_DOLLY_PATH,
    EVAL_CATEGORIES,
    HUB_DOLLY,
    DollySFTDataset,
    dolly_dataset,
    is_eval_row,
    load_rows,
    prompt_text,
    split_rows,
)
from jsd_loss.datasets._packing import PackedRowsDataset, block_causal_mask, collate_packed_rows
from jsd_loss.datasets._row_ids import PAD_ROW_ID, RowIndexedDataset, padded_collate_sft_with_row_ids

__all__ = [
    "DEFAULT_DOLLY_PATH",
    "EVAL_CATEGORIES",
    "HUB_DOLLY",
    "PAD_ROW_ID",
    "DollySFTDataset",
    "PackedRowsDataset",
    "RowIndexedDataset",
    "block_causal_mask",
    "collate_packed_rows",
    "dolly_dataset",
    "is_eval_row",
    "load_rows",
    "padded_collate_sft_with_row_ids",
    "prompt_text",
    "split_rows",
]
