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

__all__ = [
    "DEFAULT_DOLLY_PATH",
    "EVAL_CATEGORIES",
    "HUB_DOLLY",
    "DollySFTDataset",
    "dolly_dataset",
    "is_eval_row",
    "load_rows",
    "prompt_text",
    "split_rows",
]
