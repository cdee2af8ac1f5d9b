"""The teacher, computed once: a top-k cache of its distributions that many students train
from without loading it; and several teachers fused into one (``TeacherEnsemble``)
(layer 2: builds on losses, metrics and checkpointing only).

Build one with ``tune run jsd_loss/recipes/cache_teacher.py --config ...``; a distillation
config uses it through ``teacher_cache: DIR``.
"""

from jsd_loss.teacher._ensemble import TeacherEnsemble, teacher_members
from jsd_loss.teacher._build import build_topk_cache, label_positions, prepare_cache_dir
from jsd_loss.teacher._fingerprint import (
    dataset_sha256,
    sha256_files,
    teacher_sha256,
    token_hash,
    tokenizer_sha256,
)
from jsd_loss.teacher._lookup import RowNotCachedError, cached_teacher, missing_rows
from jsd_loss.teacher._rows import item_rows, rows_drawn
from jsd_loss.teacher._store import (
    CacheManifest,
    ShardRecord,
    TopKTeacherCache,
    complete_shards,
    write_shard,
)

__all__ = [
    "CacheManifest",
    "RowNotCachedError",
    "ShardRecord",
    "TeacherEnsemble",
    "TopKTeacherCache",
    "build_topk_cache",
    "cached_teacher",
    "complete_shards",
    "dataset_sha256",
    "item_rows",
    "label_positions",
    "missing_rows",
    "prepare_cache_dir",
    "rows_drawn",
    "sha256_files",
    "teacher_members",
    "teacher_sha256",
    "token_hash",
    "tokenizer_sha256",
    "write_shard",
]
