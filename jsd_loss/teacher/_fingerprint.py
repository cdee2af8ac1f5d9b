"""Hashes that tie a teacher cache to what it was built from: the teacher's weight files,
the tokenizer's files, the dataset's rows, and each row's tokens."""

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jsd_loss.checkpointing import sha256_files

def teacher_sha256(checkpoint_dir: Path, checkpoint_files: Sequence[str]) -> str:
    """The teacher's identity: its ``config.json`` and weight files."""
    checkpoint_dir = Path(checkpoint_dir)
    return sha256_files([checkpoint_dir / "config.json", *(checkpoint_dir / f for f in checkpoint_files)])


def tokenizer_sha256(tokenizer_args: Mapping[str, Any]) -> str:
    """The tokenizer's identity: its builder and arguments (``max_seq_len`` aside, which a
    cache records on its own), with every argument naming a file replaced by its contents' hash."""
    described = {}
    for key, value in sorted(tokenizer_args.items()):
        if key == "max_seq_len":
            continue
        if isinstance(value, str) and Path(value).is_file():
            value = {"sha256": sha256_files([Path(value)])}
        described[key] = value
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def token_hash(tokens: Sequence[int]) -> str:
    """A short hash of one row's token ids, checked on every cache lookup."""
    return hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


def dataset_sha256(dataset) -> str:
    """The dataset's identity: its own ``fingerprint()`` when it has one (cheap: the raw
    rows), otherwise a hash of every sample's tokens and labels (tokenizes every row)."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        sample = dataset[i]
        digest.update(np.asarray(sample["tokens"], dtype=np.int64).tobytes() + b"|")
        digest.update(np.asarray(sample["labels"], dtype=np.int64).tobytes() + b"\n")
    return digest.hexdigest()
