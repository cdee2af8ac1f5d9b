"""The training data loader: tokenized rows or packs of them, one shard per rank, resumable
mid-epoch, every batch telling which dataset row each token came from."""

from functools import partial
from typing import Any, Dict, Optional

from omegaconf import DictConfig
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchtune import config
from torchtune.datasets import PackedDataset

from jsd_loss.datasets import PackedRowsDataset, RowIndexedDataset, collate_packed_rows, padded_collate_sft_with_row_ids


def build_dataloader(
    cfg_dataset: DictConfig,
    tokenizer,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    ignore_index: int,
    world_size: int = 1,
    rank: int = 0,
    state_dict: Optional[Dict[str, Any]] = None,
) -> StatefulDataLoader:
    """
    Batches of ``batch_size`` SFT rows, or of packs of rows when the dataset is a
    :class:`~jsd_loss.datasets.PackedRowsDataset` (e.g. ``dolly_dataset(packed=True)``),
    shuffled by ``seed`` and split over ``world_size`` ranks (incomplete last batch dropped);
    ``state_dict`` resumes mid-epoch.

    Every batch holds ``tokens`` and ``labels`` (B, T) int64 and ``row_ids`` (B, T) int64: the
    index, in the dataset as ``cfg_dataset`` builds it (before packing), of the row each
    position's token came from, ``-1`` for padding. Unpacked rows are right-padded to the
    longest in the batch; packs are all ``max_seq_len`` long and also hold ``input_pos`` (B, T)
    int64, each document's positions from 0, and ``mask`` (B, T, T) bool, block-causal (a
    position attends to earlier positions of its own document only).

    Raises:
        ValueError: for torchtune's ``PackedDataset``, which does not record rows, or a packed
            dataset whose ignore index is not ``ignore_index``.
    """
    ds = config.instantiate(cfg_dataset, tokenizer)
    if isinstance(ds, PackedRowsDataset):
        if ds.ignore_idx != ignore_index:
            raise ValueError(f"the packed dataset ignores labels {ds.ignore_idx}, the loss {ignore_index}")
        collate_fn = collate_packed_rows
    elif isinstance(ds, PackedDataset):
        raise ValueError(
            "torchtune's PackedDataset does not record which row each token came from, and batches "
            "here carry row_ids: pack with jsd_loss.datasets.PackedRowsDataset (dolly_dataset's packed=True)"
        )
    else:
        ds = RowIndexedDataset(ds)
        collate_fn = partial(padded_collate_sft_with_row_ids, padding_idx=tokenizer.pad_id, ignore_idx=ignore_index)
    sampler = StatefulDistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    dataloader = StatefulDataLoader(
        dataset=ds,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=True,
    )
    if state_dict is not None:
        dataloader.load_state_dict(state_dict)
    return dataloader


def steps_per_epoch(
    num_batches: int, batch_size: int, gradient_accumulation_steps: int, max_steps: Optional[int]
) -> int:
    """Optimizer steps per epoch: whole accumulations of batches, at most ``max_steps``.

    Raises:
        ValueError: if there are fewer batches than one step accumulates.
    """
    steps = num_batches // gradient_accumulation_steps
    if max_steps is not None and max_steps < steps:
        steps = max_steps
    if steps < 1:
        raise ValueError(
            f"the dataset gives {num_batches} batches of {batch_size}, fewer than "
            f"gradient_accumulation_steps={gradient_accumulation_steps}: no optimizer step"
        )
    return steps
