"""Which dataset rows a distillation run draws, so that a cache can hold exactly those."""

from typing import List, Optional

from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler


def item_rows(dataset, index: int) -> List[int]:
    """The dataset rows that item ``index`` is made of: the rows packed into it for a
    packed dataset (one exposing ``rows_of``), otherwise the item itself."""
    rows_of = getattr(dataset, "rows_of", None)
    return list(rows_of(index)) if rows_of is not None else [index]


def rows_drawn(
    dataset,
    *,
    batch_size: int,
    gradient_accumulation_steps: int,
    epochs: int,
    max_steps_per_epoch: Optional[int],
    seed: int,
    shuffle: bool,
    world_size: int = 1,
) -> List[int]:
    """The rows a run with these settings trains on, in first-drawn order, each once.

    Mirrors the recipes' data path: a ``StatefulDistributedSampler`` per rank seeded by
    ``seed`` (reshuffled each epoch), batches of ``batch_size`` per rank with the last
    incomplete one dropped, ``gradient_accumulation_steps`` batches per optimizer step, at
    most ``max_steps_per_epoch`` steps per epoch.
    """
    seen, order = set(), []
    for epoch in range(epochs):
        for rank in range(world_size):
            sampler = StatefulDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
            sampler.set_epoch(epoch)
            items = list(sampler)
            batches = len(items) // batch_size
            steps = batches // gradient_accumulation_steps
            if max_steps_per_epoch is not None:
                steps = min(steps, max_steps_per_epoch)
            for item in items[: steps * gradient_accumulation_steps * batch_size]:
                for row in item_rows(dataset, item):
                    if row not in seen:
                        seen.add(row)
                        order.append(row)
    return order
