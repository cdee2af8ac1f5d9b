from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.training import build_dataloader
from tests.jsd_loss.datasets.fakes import IGNORE, WordTokenizer, random_rows

ROWS = {"_component_": "tests.jsd_loss.datasets.fakes.random_rows_dataset", "num_rows": 41, "seed": 2}
PACKED = {**ROWS, "packed": True}
TOKENIZER = WordTokenizer(max_seq_len=16)


def _loader(cfg, batch_size=2, shuffle=True, world_size=1, rank=0, state_dict=None, ignore_index=IGNORE):
    return build_dataloader(OmegaConf.create(cfg), TOKENIZER, batch_size=batch_size, shuffle=shuffle, seed=7,
                            ignore_index=ignore_index, world_size=world_size, rank=rank, state_dict=state_dict)


def _epoch(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_unpacked_batches_carry_the_row_of_every_token():
    rows = random_rows(41, 16, seed=2)
    batches = _epoch(_loader(ROWS, batch_size=3))
    assert len(batches) == 41 // 3
    seen = []
    for batch in batches:
        assert sorted(batch) == ["labels", "row_ids", "tokens"]
        assert batch["row_ids"].dtype == torch.int64 and batch["row_ids"].shape == batch["tokens"].shape
        for b in range(3):
            row = int(batch["row_ids"][b, 0])
            n = len(rows[row]["tokens"])
            assert batch["row_ids"][b].tolist() == [row] * n + [-1] * (batch["tokens"].shape[1] - n)
            assert batch["tokens"][b, :n].tolist() == rows[row]["tokens"]
            assert batch["labels"][b, :n].tolist() == rows[row]["labels"]
            assert (batch["labels"][b, n:] == IGNORE).all()
            seen.append(row)
    assert len(set(seen)) == len(seen) == 39 and seen != sorted(seen)  # shuffled, last batch dropped


def test_packed_batches_carry_mask_positions_and_every_row_once_an_epoch():
    rows = random_rows(41, 16, seed=2)
    batches = _epoch(_loader(PACKED, batch_size=1))
    counts = Counter()
    for batch in batches:
        assert sorted(batch) == ["input_pos", "labels", "mask", "row_ids", "tokens"]
        for key in ("tokens", "labels", "input_pos", "row_ids"):
            assert batch[key].shape == (1, 16) and batch[key].dtype == torch.int64, key
        assert batch["mask"].shape == (1, 16, 16) and batch["mask"].dtype == torch.bool
        row_ids = batch["row_ids"][0]
        for row in set(row_ids.tolist()) - {-1}:
            at = row_ids == row
            assert batch["tokens"][0, at].tolist() == rows[row]["tokens"]
            assert batch["input_pos"][0, at].tolist() == list(range(int(at.sum())))
            counts[row] += 1
        assert (batch["labels"][0, row_ids == -1] == IGNORE).all()
    assert len(batches) < 41 and sorted(counts) == list(range(41)) and set(counts.values()) == {1}


@pytest.mark.parametrize("cfg", [ROWS, PACKED], ids=["rows", "packed"])
def test_two_ranks_split_the_packs(cfg):
    whole = {tuple(b["row_ids"][0].tolist()) for b in _epoch(_loader(cfg, batch_size=1))}
    shards = [{tuple(b["row_ids"][0].tolist()) for b in _epoch(_loader(cfg, batch_size=1, world_size=2, rank=r))}
              for r in (0, 1)]
    # an odd count: the sampler repeats one pack to even the shards
    assert shards[0] | shards[1] == whole and len(shards[0] & shards[1]) <= len(whole) % 2
    assert abs(len(shards[0]) - len(shards[1])) <= 1


@pytest.mark.parametrize("cfg", [ROWS, PACKED], ids=["rows", "packed"])
def test_resume_mid_epoch_gives_the_rest_of_the_epoch(cfg):
    loader = _loader(cfg)
    loader.sampler.set_epoch(1)
    it = iter(loader)
    for _ in range(2):
        next(it)
    state = loader.state_dict()
    rest = list(it)
    resumed = _loader(cfg, state_dict=state)
    resumed.sampler.set_epoch(1)
    again = list(resumed)
    assert len(again) == len(rest) > 0
    for a, b in zip(rest, again):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packs_and_loss_must_agree_on_the_ignore_index():
    with pytest.raises(ValueError, match="the packed dataset ignores labels -100, the loss -1"):
        _loader(PACKED, ignore_index=-1)


def test_torchtunes_packed_dataset_is_refused_for_it_records_no_rows():
    with pytest.raises(ValueError, match="torchtune's PackedDataset does not record which row"):
        _loader({"_component_": "tests.jsd_loss.datasets.fakes.torchtune_packed_rows"})
