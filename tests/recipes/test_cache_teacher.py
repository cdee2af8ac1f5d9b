"""The teacher cache end to end: built by its recipe, used by both distillation recipes."""

import pytest

from jsd_loss.teacher import TopKTeacherCache
from tests.conftest import metrics, tiny_config, tune_run
from tests.recipes.test_jsd_distill_distributed import tune_run_distributed

CACHE = "jsd_loss/recipes/cache_teacher.py"
VOCAB = 49152
# few, short rows: a k = V cache holds the whole distribution (8 bytes per token per entry)
SMALL = {"dataset.max_rows": 4, "tokenizer.max_seq_len": 32, "batch_size": 2, "max_steps_per_epoch": 2,
         "save_every_n_steps": None, "shuffle": True}


def _build(cfg, cache_dir, *extra):
    return tune_run(cfg, f"teacher_cache={cache_dir}", "cache.rows=run", *extra, recipe=CACHE)


@pytest.mark.parametrize("kd_loss,packed", [("chunked", False), ("fused", False), ("chunked", True)])
def test_a_full_vocabulary_cache_trains_exactly_like_the_live_teacher(tmp_path, tiny_dirs, kd_loss, packed):
    overrides = dict(SMALL)
    if packed:  # 4 rows of at most 32 tokens make about 3 packs of 64
        overrides.update({"dataset.packed": True, "tokenizer.max_seq_len": 64, "batch_size": 1,
                          "dataset.max_rows": 6})
    if kd_loss == "fused":
        overrides["kd_loss"] = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "return_ce": True}
    (tmp_path / "live").mkdir(), (tmp_path / "cached").mkdir()
    live_cfg = tiny_config(tmp_path / "live", *tiny_dirs, **overrides)
    cached_cfg = tiny_config(tmp_path / "cached", *tiny_dirs, **overrides)
    cache_dir = tmp_path / "cache"
    _build(cached_cfg, cache_dir, f"cache.k={VOCAB}", "cache.log_prob_dtype=float32")
    if not packed:
        assert len(TopKTeacherCache(cache_dir)) == 4
    tune_run(live_cfg)
    proc = tune_run(cached_cfg, f"teacher_cache={cache_dir}")
    assert "Teacher model is initialized" not in proc.stderr + proc.stdout
    live, cached = metrics(tmp_path / "live" / "out"), metrics(tmp_path / "cached" / "out")
    assert len(cached) == 2
    for a, b in zip(live, cached):
        for key in ("kd_loss", "class_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key)


def test_the_cache_recipe_resumes_and_refuses_other_settings(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs, **SMALL)
    cache_dir = tmp_path / "cache"
    _build(cfg, cache_dir, "cache.k=8", "cache.shard_rows=2")
    first = (cache_dir / "shard_00000" / "ids.bin").stat().st_mtime_ns
    again = _build(cfg, cache_dir, "cache.k=8", "cache.shard_rows=2")
    assert "Cached" not in again.stderr  # nothing left to do
    assert (cache_dir / "shard_00000" / "ids.bin").stat().st_mtime_ns == first
    proc = tune_run(cfg, f"teacher_cache={cache_dir}", "cache.rows=run", "cache.k=16", "cache.shard_rows=2",
                    recipe=CACHE, check=False)
    assert proc.returncode != 0 and "k: cache has 8, expected 16" in proc.stderr
    assert (cache_dir / "shard_00000" / "ids.bin").stat().st_mtime_ns == first
    # a distillation run whose temperature differs from the cache's is refused at setup
    proc = tune_run(cfg, f"teacher_cache={cache_dir}", "kd_loss.temperature=2.0", check=False)
    assert proc.returncode != 0 and "temperature: cache has 1.0, this run needs 2.0" in proc.stderr
    assert not (tmp_path / "out" / "final").exists()


def test_two_ranks_train_from_the_cache(tmp_path, tiny_dirs):
    overrides = {**SMALL, "dataset.max_rows": 8, "batch_size": 1}
    (tmp_path / "live").mkdir(), (tmp_path / "cached").mkdir()
    live_cfg = tiny_config(tmp_path / "live", *tiny_dirs, **overrides)
    cached_cfg = tiny_config(tmp_path / "cached", *tiny_dirs, **overrides)
    cache_dir = tmp_path / "cache"
    _build(cached_cfg, cache_dir, f"cache.k={VOCAB}", "cache.log_prob_dtype=float32", "cache.world_size=2")
    tune_run_distributed(live_cfg)
    tune_run_distributed(cached_cfg, f"teacher_cache={cache_dir}")
    live, cached = metrics(tmp_path / "live" / "out"), metrics(tmp_path / "cached" / "out")
    assert len(cached) == 2
    for a, b in zip(live, cached):
        assert b["kd_loss"] == pytest.approx(a["kd_loss"], rel=2e-4), a["step"]
