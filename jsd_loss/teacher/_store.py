"""On-disk layout of a top-k teacher cache: a JSON manifest and shards of flat binary arrays.

::

    cache_dir/
      manifest.json          what the cache holds and what it was built from (written first)
      shard_00000/           one directory per ``shard_rows`` requested rows, renamed into
        index.json           place when complete (a killed build leaves only ``.shard_*.tmp``)
        checksums.json       sizes and sha256 of the four files (caches built before it: none)
        ids.bin              (tokens, k) token ids, uint16 when the vocabulary fits, else int32
        log_probs.bin        (tokens, k) teacher log-probabilities, float16 or float32
        tail_log_mass.bin    (tokens,) float32 log of the mass outside the k tokens

``index.json`` maps each row of the shard to its first token and token count in the arrays
and holds a hash of the row's tokens; ``checksums.json`` the size and SHA-256 of the other
four files, verified when a shard is first read (a flipped bit in the arrays would otherwise
be a silently different teacher). Nothing here is pickled; the arrays are read with
``numpy.memmap``, so opening a cache costs nothing however large it is.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from jsd_loss.checkpointing import atomic_file, verify_file, write_checksums
from jsd_loss.losses import TopKDistribution

FORMAT = "jsd_distill.topk_teacher_cache/1"
MANIFEST = "manifest.json"
LOG_PROB_DTYPES = ("float16", "float32")


@dataclass
class CacheManifest:
    """What a cache holds (``k``, dtypes, rows) and what it was built from (hashes of the
    teacher's weights, the tokenizer files and the dataset rows; ``max_seq_len``; the
    temperature its distributions are at)."""

    k: int
    vocab_size: int
    temperature: float
    max_seq_len: int
    teacher_sha256: str
    tokenizer_sha256: str
    dataset_sha256: str
    rows: List[int]
    shard_rows: int = 256
    log_prob_dtype: str = "float16"
    positions: str = "labels"  # the positions whose next token is a training label
    format: str = FORMAT
    notes: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k < 1 or self.k > self.vocab_size:
            raise ValueError(f"k must be in [1, vocab_size={self.vocab_size}], got {self.k}")
        if self.log_prob_dtype not in LOG_PROB_DTYPES:
            raise ValueError(f"log_prob_dtype must be one of {LOG_PROB_DTYPES}, got {self.log_prob_dtype!r}")
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {self.shard_rows}")
        if len(set(self.rows)) != len(self.rows):
            raise ValueError("the rows to cache contain duplicates")

    @property
    def id_dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.int32)

    @property
    def num_shards(self) -> int:
        return -(-len(self.rows) // self.shard_rows)

    def shard(self, i: int) -> List[int]:
        return self.rows[i * self.shard_rows : (i + 1) * self.shard_rows]

    def bytes_per_token(self) -> int:
        return self.k * (self.id_dtype.itemsize + np.dtype(self.log_prob_dtype).itemsize) + 4

    def mismatches(self, other: "CacheManifest", fields: Sequence[str]) -> List[str]:
        return [f"{f}: cache has {getattr(self, f)!r}, expected {getattr(other, f)!r}"
                for f in fields if getattr(self, f) != getattr(other, f)]

    @classmethod
    def read(cls, cache_dir: Path) -> "CacheManifest":
        path = Path(cache_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{cache_dir} is not a teacher cache: {MANIFEST} is missing")
        try:
            data = json.loads(path.read_bytes().decode())
        except ValueError as e:
            raise ValueError(f"{path} is corrupted (not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown cache format {data.get('format') if isinstance(data, dict) else data!r} "
                             f"(expected {FORMAT!r})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} is corrupted: {e}") from None

    def write(self, cache_dir: Path) -> None:
        with atomic_file(Path(cache_dir) / MANIFEST, overwrite=True) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")


def shard_dir(cache_dir: Path, i: int) -> Path:
    return Path(cache_dir) / f"shard_{i:05d}"


@dataclass
class ShardRecord:
    """One row's cached teacher distributions, in the order of its label positions."""

    row: int
    token_hash: str
    ids: np.ndarray  # (n, k)
    log_probs: np.ndarray  # (n, k)
    tail_log_mass: np.ndarray  # (n,)


def write_shard(cache_dir: Path, i: int, manifest: CacheManifest, records: Sequence[ShardRecord]) -> None:
    """Write shard ``i`` into a hidden temporary directory, then rename it into place."""
    final, tmp = shard_dir(cache_dir, i), Path(cache_dir) / f".shard_{i:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = [len(r.tail_log_mass) for r in records]
    arrays = {
        "ids.bin": [r.ids.astype(manifest.id_dtype) for r in records],
        "log_probs.bin": [np.clip(r.log_probs, -6e4, 0).astype(manifest.log_prob_dtype) for r in records],
        "tail_log_mass.bin": [r.tail_log_mass.astype(np.float32) for r in records],
    }
    for name, parts in arrays.items():
        with open(tmp / name, "wb") as fh:
            for part in parts:
                fh.write(np.ascontiguousarray(part).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
    index = {"rows": [r.row for r in records], "offsets": np.cumsum([0] + counts[:-1]).tolist(),
             "counts": counts, "token_hashes": [r.token_hash for r in records]}
    (tmp / "index.json").write_text(json.dumps(index) + "\n")
    write_checksums(tmp, ["index.json", *arrays])
    os.replace(tmp, final)


class TopKTeacherCache:
    """Read access to a complete cache: the teacher's top-k distributions of a row.

    Args:
        cache_dir (Path): a directory written by :func:`jsd_loss.teacher.build_topk_cache`.

    Raises:
        FileNotFoundError: if the manifest or a shard is missing (an unfinished build).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = CacheManifest.read(self.cache_dir)
        self._where: Dict[int, Tuple[int, int, int, str]] = {}
        self._arrays: Dict[int, Tuple[np.memmap, np.memmap, np.memmap]] = {}
        missing = [i for i in range(self.manifest.num_shards) if not shard_dir(self.cache_dir, i).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"teacher cache {self.cache_dir} is incomplete: {len(missing)} of {self.manifest.num_shards} "
                f"shards missing (first: {shard_dir(self.cache_dir, missing[0]).name}); run the cache build "
                "again to finish it"
            )
        for i in range(self.manifest.num_shards):
            path = shard_dir(self.cache_dir, i) / "index.json"
            verify_file(path)
            try:
                index = json.loads(path.read_bytes().decode())
                for row, off, n, h in zip(index["rows"], index["offsets"], index["counts"], index["token_hashes"],
                                          strict=True):
                    self._where[row] = (i, int(off), int(n), str(h))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path} is corrupted ({type(e).__name__}: {e})") from None

    def __contains__(self, row: int) -> bool:
        return row in self._where

    def __len__(self) -> int:
        return len(self._where)

    @property
    def rows(self) -> List[int]:
        return list(self._where)

    def num_tokens(self) -> int:
        return sum(n for _, _, n, _ in self._where.values())

    def _shard_arrays(self, i: int) -> Tuple[np.memmap, np.memmap, np.memmap]:
        if i not in self._arrays:
            d, m, k = shard_dir(self.cache_dir, i), self.manifest, self.manifest.k

            def open_(name, dtype, width):
                verify_file(d / name)
                if (d / name).stat().st_size == 0:
                    return np.zeros((0, width) if width else (0,), dtype=dtype)
                try:
                    arr = np.memmap(d / name, dtype=dtype, mode="r")
                    return arr.reshape(-1, width) if width else arr
                except ValueError as e:
                    raise ValueError(f"{d / name} is corrupted (truncated?): {e}") from None

            self._arrays[i] = (open_("ids.bin", m.id_dtype, k), open_("log_probs.bin", m.log_prob_dtype, k),
                               open_("tail_log_mass.bin", np.float32, 0))
        return self._arrays[i]

    def token_hash(self, row: int) -> str:
        return self._where[row][3]

    def row(self, row: int) -> TopKDistribution:
        """The cached distributions of ``row``: ``(n, k)`` ids and log-probs, ``(n,)`` tail."""
        if row not in self._where:
            raise KeyError(f"row {row} is not in the teacher cache {self.cache_dir}")
        i, off, n, _ = self._where[row]
        ids, log_probs, tail = self._shard_arrays(i)
        for name, arr in (("ids.bin", ids), ("log_probs.bin", log_probs), ("tail_log_mass.bin", tail)):
            if len(arr) < off + n:
                raise ValueError(f"{shard_dir(self.cache_dir, i) / name} is corrupted (truncated?): row {row} "
                                 f"lies beyond its end")
        return TopKDistribution(
            torch.from_numpy(ids[off : off + n].astype(np.int64)),
            torch.from_numpy(log_probs[off : off + n].astype(np.float32)),
            torch.from_numpy(tail[off : off + n].astype(np.float32)),
        )


def complete_shards(cache_dir: Path, manifest: Optional[CacheManifest] = None) -> List[int]:
    manifest = manifest or CacheManifest.read(cache_dir)
    return [i for i in range(manifest.num_shards) if shard_dir(cache_dir, i).is_dir()]
