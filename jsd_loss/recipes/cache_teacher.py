"""Run the teacher once and keep its top-k distributions, so that students train without it.

    tune run jsd_loss/recipes/cache_teacher.py --config configs/smollm2/cache_teacher_135M.yaml
    # exactly the rows a distillation run draws, from that run's own config:
    tune run jsd_loss/recipes/cache_teacher.py --config configs/smollm2/135M_to_90M_jsd_quick_cached.yaml

The config reads like a distillation config (``teacher_model``, ``teacher_checkpointer``,
``tokenizer``, ``dataset`` and, for ``cache.rows: run``, the run's ``seed``, ``shuffle``,
``batch_size``, ``gradient_accumulation_steps``, ``epochs``, ``max_steps_per_epoch``) plus:

    teacher_cache: DIR        # where the cache goes
    cache:
      k: 128                  # tokens kept per position (the rest is one tail bucket)
      temperature: 1.0        # default: kd_loss.temperature when the config has a kd_loss
      rows: all               # all | first (cache.max_rows of them) | run
      max_rows: null
      world_size: 1           # rows: run of a distributed run with this many ranks
      batch_size: 8           # rows per teacher forward
      shard_rows: 256         # rows per shard (the unit of resumption)
      log_prob_dtype: float16 # or float32
    overwrite: False          # replace a cache of other settings in teacher_cache

Killed, it resumes at its first unfinished shard when run again with the same config.
"""

import sys
import time
from pathlib import Path

from omegaconf import DictConfig
from torchtune import config, training, utils

from jsd_loss.checkpointing import read_config
from jsd_loss.teacher import build_topk_cache
from jsd_loss.training import (
    check_checkpoint_files,
    checked_meta_model,
    checkpoint_weights,
    manifest_for,
    run_rows,
    setup_teacher,
    unpacked,
)

log = utils.get_logger("INFO")

ROW_CHOICES = ("all", "first", "run")


class TeacherCacheRecipe:
    """Builds (or finishes) a top-k teacher cache; see the module docstring.

    Args:
        cfg (DictConfig): the parsed config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self._cfg = cfg
        self._device = utils.get_device(device=cfg.get("device", "cpu"))
        self._dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self._device)
        if "teacher_cache" not in cfg:
            raise ValueError("the config has no teacher_cache: the directory to write the cache to")
        self._cache_dir = Path(cfg.teacher_cache)
        self._cache_cfg = cfg.get("cache", {})
        rows = self._cache_cfg.get("rows", "all")
        if rows not in ROW_CHOICES:
            raise ValueError(f"cache.rows must be one of {ROW_CHOICES}, got {rows!r}")
        if rows == "first" and not self._cache_cfg.get("max_rows"):
            raise ValueError("cache.rows: first needs cache.max_rows")

    def setup(self) -> None:
        """Inputs are checked and the rows chosen before the teacher is loaded."""
        cfg = self._cfg
        teacher_dir = Path(cfg.teacher_checkpointer.checkpoint_dir)
        teacher_hf_config = read_config(teacher_dir)
        check_checkpoint_files(cfg.teacher_checkpointer, "teacher")
        checked_meta_model(cfg.teacher_model, self._dtype, teacher_hf_config, "teacher", teacher_dir)
        tokenizer = config.instantiate(cfg.tokenizer)
        dataset = config.instantiate(cfg.dataset, tokenizer)
        self._rows_dataset = unpacked(dataset)
        choice = self._cache_cfg.get("rows", "all")
        if choice == "run":
            rows = run_rows(cfg, dataset, int(self._cache_cfg.get("world_size", 1)))
        else:
            n = len(self._rows_dataset)
            rows = list(range(min(int(self._cache_cfg.max_rows), n) if choice == "first" else n))
        self._manifest = manifest_for(cfg, dataset, rows, teacher_hf_config["vocab_size"])
        log.info(
            f"Caching the teacher's top-{self._manifest.k} at {len(rows)} rows ({choice}) in {self._cache_dir}, "
            f"{self._manifest.bytes_per_token()} bytes per token."
        )
        state = checkpoint_weights(cfg.teacher_checkpointer)
        self._teacher = setup_teacher(cfg.teacher_model, state, device=self._device, dtype=self._dtype)

    def build(self) -> None:
        t0 = time.perf_counter()
        done = {"rows": 0, "seconds": 0.0}

        def on_shard(rows: int, seconds: float) -> None:
            done["rows"] += rows
            done["seconds"] += seconds

        build_topk_cache(
            self._teacher, self._rows_dataset, self._cache_dir, self._manifest,
            batch_size=int(self._cache_cfg.get("batch_size", 8)), device=self._device,
            overwrite=bool(self._cfg.get("overwrite", False)), on_shard=on_shard,
        )
        if done["rows"]:
            log.info(f"Cached {done['rows']} rows in {done['seconds']:.1f} s "
                     f"({done['rows'] / done['seconds']:.2f} rows/s).")
        log.info(f"Teacher cache complete: {self._cache_dir} ({time.perf_counter() - t0:.1f} s this run).")

    def cleanup(self) -> None:
        pass


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    recipe = TeacherCacheRecipe(cfg)
    recipe.setup()
    recipe.build()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
