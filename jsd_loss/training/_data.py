"""The training data loader: tokenized rows, one shard per rank, resumable mid-epoch."""

from functools import partial
from typing import Any, Dict, Optional

from omegaconf import DictConfig
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchtune import config
from torchtune.data import padded_collate_sft


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
    """Batches of ``batch_size`` padded SFT rows (incomplete last batch dropped), shuffled
    by ``seed`` and split over ``world_size`` ranks; ``state_dict`` resumes mid-epoch."""
    ds = config.instantiate(cfg_dataset, tokenizer)
    sampler = StatefulDistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    dataloader = StatefulDataLoader(
        dataset=ds,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(padded_collate_sft, padding_idx=tokenizer.pad_id, ignore_idx=ignore_index),
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
