"""The teacher cache's files on disk: checksummed, and damaged ones refused naming the file."""

import json

import numpy as np
import pytest

from jsd_loss.checkpointing import CHECKSUMS
from jsd_loss.teacher import TopKTeacherCache
from jsd_loss.teacher._store import ShardRecord, write_shard
from tests.fuzz import check, fuzz
from tests.jsd_loss.teacher.test_build import manifest


def write_cache(path, rows=(0, 1, 2, 3), k=5):
    """A one-shard cache of random distributions, written by the store itself."""
    rng = np.random.default_rng(0)
    m = manifest(list(rows))
    path.mkdir(parents=True)
    m.write(path)
    records = []
    for r in rows:
        n = 3 + r
        log_probs = np.sort(np.log(rng.dirichlet(np.ones(k), n)), axis=1)[:, ::-1]
        records.append(ShardRecord(row=r, token_hash=f"h{r}", ids=rng.integers(0, m.vocab_size, (n, k)),
                                   log_probs=log_probs, tail_log_mass=np.full(n, -5.0, dtype=np.float32)))
    write_shard(path, 0, m, records)
    return path


def test_a_shard_records_the_checksums_of_its_files(tmp_path):
    cache = write_cache(tmp_path / "c")
    recorded = json.loads((cache / "shard_00000" / CHECKSUMS).read_text())["files"]
    assert sorted(recorded) == ["ids.bin", "index.json", "log_probs.bin", "tail_log_mass.bin"]
    assert TopKTeacherCache(cache).row(2).ids.shape == (5, 5)


@pytest.mark.parametrize("target", ["log_probs.bin", "index.json"])
def test_fuzzed_cache_files_are_refused_naming_the_file_or_caught_by_the_checksum(tmp_path, target):
    """Without its checksums a flip in the arrays reads as another teacher (and a cut array
    or a broken index is refused); with them every change is refused, naming the file."""
    write_cache(tmp_path / "cache" / "c")
    counts = check(fuzz("cache", tmp_path / "cache", f"c/shard_00000/{target}", seed=4, flips=30),
                   cuts_always_refused=True)
    assert counts["error"] > 0 and (counts["different"] > 0 or target == "index.json"), counts
