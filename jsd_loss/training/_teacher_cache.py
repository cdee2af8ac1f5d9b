"""A recipe's view of the teacher cache: what a config says the cache must be a cache of,
the rows its run draws, and a cache opened only when it matches both."""

from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from omegaconf import DictConfig, OmegaConf
from torch import nn

from jsd_loss.datasets import PackedRowsDataset, RowIndexedDataset
from jsd_loss.losses import TopKDistribution
from jsd_loss.teacher import (
    RowNotCachedError,
    CacheManifest,
    TopKTeacherCache,
    cached_teacher,
    dataset_sha256,
    missing_rows,
    rows_drawn,
    teacher_sha256,
    tokenizer_sha256,
)
from jsd_loss.training._schedules import kd_temperature


def unpacked(dataset):
    """The dataset of rows under a packed or row-indexed one (cache rows are indices into it)."""
    while isinstance(dataset, (PackedRowsDataset, RowIndexedDataset)):
        dataset = dataset.ds
    return dataset


def cache_identity(cfg: DictConfig, dataset) -> Dict[str, object]:
    """What a cache for this config must have been built from: the teacher checkpoint's
    files, the tokenizer's, the dataset's rows, ``max_seq_len``. (The temperature is the
    KD loss's and is checked on its own.)"""
    ckpt = cfg.teacher_checkpointer
    tokenizer_args = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    if tokenizer_args.get("max_seq_len") is None:
        raise ValueError("a teacher cache needs tokenizer.max_seq_len: the cache is tied to one truncation length")
    return {
        "teacher_sha256": teacher_sha256(Path(ckpt.checkpoint_dir), list(ckpt.checkpoint_files)),
        "tokenizer_sha256": tokenizer_sha256(tokenizer_args),
        "dataset_sha256": dataset_sha256(unpacked(dataset)),
        "max_seq_len": int(tokenizer_args["max_seq_len"]),
    }


def run_rows(cfg: DictConfig, dataset, world_size: int) -> List[int]:
    """The dataset rows this config's distillation run draws (all ranks)."""
    return rows_drawn(
        dataset, batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        epochs=cfg.epochs, max_steps_per_epoch=cfg.get("max_steps_per_epoch", None), seed=cfg.seed,
        shuffle=cfg.shuffle, world_size=world_size,
    )


def open_teacher_cache(cfg: DictConfig, dataset, *, vocab_size: int, world_size: int, log=None) -> TopKTeacherCache:
    """The cache at ``cfg.teacher_cache``, once it is known to be a cache of this run's
    teacher, tokenizer, dataset, sequence length and KD temperature and to hold every row
    the run draws (or ``teacher_cache_fallback: live`` says what to do about the others).

    Raises:
        ValueError: naming every mismatch, or the rows missing without a fallback.
    """
    cache = TopKTeacherCache(Path(cfg.teacher_cache))
    m = cache.manifest
    expected = {**cache_identity(cfg, dataset), "temperature": kd_temperature(cfg), "vocab_size": vocab_size}
    diff = [f"{key}: cache has {getattr(m, key)!r}, this run needs {value!r}"
            for key, value in expected.items() if getattr(m, key) != value]
    if diff:
        raise ValueError(f"teacher cache {cache.cache_dir} does not match this run: " + "; ".join(diff))
    fallback = cfg.get("teacher_cache_fallback", "error")
    if fallback not in ("error", "live"):
        raise ValueError(f"teacher_cache_fallback must be 'error' or 'live', got {fallback!r}")
    lacking = missing_rows(cache, run_rows(cfg, dataset, world_size))
    if lacking and fallback == "error":
        raise ValueError(
            f"teacher cache {cache.cache_dir} lacks {len(lacking)} of the rows this run draws (first: "
            f"{lacking[:5]}); build it for this run (tune run jsd_loss/recipes/cache_teacher.py --config "
            "<this config> with cache.rows: run) or set teacher_cache_fallback: live"
        )
    if lacking and log is not None:
        log.warning(f"{len(lacking)} rows of this run are not cached: their batches use the live teacher")
    return cache


def manifest_for(cfg: DictConfig, dataset, rows: List[int], vocab_size: int) -> CacheManifest:
    """The manifest of a cache of ``rows`` built as ``cfg.cache`` says."""
    c = cfg.get("cache", {})
    return CacheManifest(
        k=int(c.get("k", 128)), vocab_size=vocab_size, temperature=float(c.get("temperature", kd_temperature(cfg))),
        rows=list(rows), shard_rows=int(c.get("shard_rows", 256)),
        log_prob_dtype=c.get("log_prob_dtype", "float16"), **cache_identity(cfg, dataset),
    )


def batch_teacher(
    cache: Optional[TopKTeacherCache],
    live: Optional[nn.Module],
    batch: Dict[str, torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int,
) -> Union[nn.Module, TopKDistribution]:
    """What :func:`~jsd_loss.training.kd_step` takes as the teacher of ``batch`` (shifted
    ``labels``): its cached distributions, on the labels' device; the ``live`` teacher when
    there is no cache, or when a row is not cached and there is a live teacher to fall back on.
    """
    if cache is None:
        return live
    try:
        return cached_teacher(cache, batch["tokens"], labels, batch["row_ids"], ignore_index).to(labels.device)
    except RowNotCachedError:
        if live is None:
            raise
        return live
