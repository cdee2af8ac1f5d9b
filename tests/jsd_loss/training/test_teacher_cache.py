"""A distillation config's checks of a teacher cache, before any model is loaded."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from torchtune import config

from jsd_loss.teacher import ShardRecord, write_shard
from jsd_loss.training import manifest_for, open_teacher_cache, run_rows
from tests.conftest import tiny_config, write_tiny_hf_dir


def _cfg(tmp_path, tiny_dirs, **overrides):
    cfg = OmegaConf.load(tiny_config(tmp_path, *tiny_dirs, **overrides))
    cfg.teacher_cache = str(tmp_path / "cache")
    return cfg


def _dataset(cfg):
    return config.instantiate(cfg.dataset, config.instantiate(cfg.tokenizer))


def _write_cache(cfg, rows):
    """A cache for ``cfg`` holding ``rows`` (contents irrelevant to these checks)."""
    ds = _dataset(cfg)
    m = manifest_for(cfg, ds, rows, 49152)
    m.write(cfg.teacher_cache)
    for i in range(m.num_shards):
        write_shard(cfg.teacher_cache, i, m, [
            ShardRecord(r, "0", np.zeros((1, m.k)), np.zeros((1, m.k)), np.zeros(1)) for r in m.shard(i)])
    return m


def test_a_matching_cache_opens_and_each_mismatch_is_named(tmp_path, tiny_dirs):
    cfg = _cfg(tmp_path, tiny_dirs, shuffle=True)
    ds = _dataset(cfg)
    rows = run_rows(cfg, ds, world_size=1)
    assert len(rows) == cfg.batch_size * cfg.max_steps_per_epoch
    _write_cache(cfg, rows)
    cache = open_teacher_cache(cfg, ds, vocab_size=49152, world_size=1)
    assert sorted(cache.rows) == sorted(rows)

    def refused(match, **changes):
        changed = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in changes.items()]))
        with pytest.raises(ValueError, match=match):
            open_teacher_cache(changed, _dataset(changed), vocab_size=49152, world_size=1)

    refused(r"temperature: cache has 1.0, this run needs 2.0", **{"kd_loss.temperature": 2.0})
    refused(r"max_seq_len: cache has 64, this run needs 32", **{"tokenizer.max_seq_len": 32})
    refused(r"dataset_sha256", **{"dataset.max_rows": 15})
    refused(r"dataset_sha256", **{"dataset.train_on_input": True})
    other = write_tiny_hf_dir(tmp_path / "other_teacher", seed=9, tokenizer_from=tiny_dirs[0])
    refused(r"teacher_sha256", teacher_dir=str(other))
    refused(r"lacks \d+ of the rows this run draws", seed=7)
    refused(r"lacks \d+ of the rows this run draws", max_steps_per_epoch=6)
    with pytest.raises(ValueError, match="vocab_size: cache has 49152, this run needs 100"):
        open_teacher_cache(cfg, ds, vocab_size=100, world_size=1)
    # with the live fallback, missing rows are only reported
    live = OmegaConf.merge(cfg, {"seed": 7, "teacher_cache_fallback": "live"})
    open_teacher_cache(live, ds, vocab_size=49152, world_size=1)
    bad = OmegaConf.merge(cfg, {"teacher_cache_fallback": "maybe"})
    with pytest.raises(ValueError, match="teacher_cache_fallback must be"):
        open_teacher_cache(bad, ds, vocab_size=49152, world_size=1)


def test_rows_of_a_distributed_run_cover_every_rank(tmp_path, tiny_dirs):
    cfg = _cfg(tmp_path, tiny_dirs, shuffle=True, max_steps_per_epoch=2)
    ds = _dataset(cfg)
    one, two = run_rows(cfg, ds, 1), run_rows(cfg, ds, 2)
    assert len(one) == 4 and len(two) == 8 and len(set(two)) == 8


def test_an_unfinished_or_absent_cache_is_refused(tmp_path, tiny_dirs):
    cfg = _cfg(tmp_path, tiny_dirs)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        open_teacher_cache(cfg, _dataset(cfg), vocab_size=49152, world_size=1)
    m = manifest_for(cfg, _dataset(cfg), list(range(300)), 49152)
    m.write(cfg.teacher_cache)
    with pytest.raises(FileNotFoundError, match="incomplete: 2 of 2 shards missing"):
        open_teacher_cache(cfg, _dataset(cfg), vocab_size=49152, world_size=1)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
def test_run_rows_are_the_rows_the_dataloader_yields(tmp_path, tiny_dirs, packed, world_size):
    from jsd_loss.training import build_dataloader

    cfg = _cfg(tmp_path, tiny_dirs, shuffle=True, max_steps_per_epoch=3, epochs=2, gradient_accumulation_steps=2,
               batch_size=1, **{"dataset.packed": packed, "dataset.max_rows": 40})
    tokenizer = config.instantiate(cfg.tokenizer)
    seen = set()
    for rank in range(world_size):
        loader = build_dataloader(cfg.dataset, tokenizer, batch_size=1, shuffle=True, seed=cfg.seed,
                                  ignore_index=-100, world_size=world_size, rank=rank)
        for epoch in range(cfg.epochs):
            loader.sampler.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if i == cfg.max_steps_per_epoch * cfg.gradient_accumulation_steps:
                    break
                seen |= set(batch["row_ids"].unique().tolist()) - {-1}
    rows = run_rows(cfg, loader.dataset, world_size)
    assert len(rows) == len(set(rows)) and set(rows) == seen
