"""A model's raw results on an eval set (greedy outputs, generation tokens/s, teacher-forced
predictions) kept on disk, keyed by its weights and every eval setting that changes them, so
an eval that adds a seed or a student runs only the new models."""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from jsd_loss.checkpointing import atomic_file, sha256_files, weight_files

# bump when what a model's run produces changes (generation or teacher forcing)
SCORE_CACHE_VERSION = 1
_FIELDS = ("outputs", "generation_tokens_per_second", "tf")


def model_run_key(checkpoint_dir: Path, *, quantize: Optional[str], settings: Dict[str, Any]) -> str:
    """SHA-256 of a model's ``config.json`` and weight files, its quantisation and the eval
    ``settings`` (JSON-serialisable: the examples, tokenizer, generation arguments, dtype,
    device): equal keys mean the run would produce the same results."""
    checkpoint_dir = Path(checkpoint_dir)
    identity = {
        "version": SCORE_CACHE_VERSION,
        "weights": sha256_files([checkpoint_dir / "config.json"] + weight_files(checkpoint_dir)),
        "quantize": quantize,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class ModelScoreCache:
    """One JSON file per key in ``directory``; see :func:`model_run_key`.

    Args:
        directory (Path): where the files live (created on the first :meth:`put`).
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        """The results stored under ``key`` (``tf["argmax"]`` as tensors again), or None.

        Raises:
            ValueError: naming the file, if it is not a file :meth:`put` wrote for ``key``.
        """
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("key") != key or any(f not in data for f in _FIELDS):
                raise ValueError("not written for this key")
            tf = data["tf"]
            if not all(len(tf[f]) == len(data["outputs"]) for f in ("argmax", "nll", "n_tokens")):
                raise ValueError("fields of different lengths")
            argmax = [torch.tensor(a, dtype=torch.long) for a in tf["argmax"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"score cache file {path} is not a cached model run ({e}); delete it to re-score") from e
        return {"outputs": data["outputs"], "generation_tokens_per_second": data["generation_tokens_per_second"],
                "tf": {"argmax": argmax, "nll": tf["nll"], "n_tokens": tf["n_tokens"]}}

    def put(self, key: str, run: Dict[str, Any]) -> None:
        """Store ``run`` (the fields a model's eval run returns) under ``key``, atomically."""
        tf = run["tf"]
        data = {"key": key, "outputs": run["outputs"], "generation_tokens_per_second": run["generation_tokens_per_second"],
                "tf": {"argmax": [a.tolist() for a in tf["argmax"]], "nll": tf["nll"], "n_tokens": tf["n_tokens"]}}
        with atomic_file(self._path(key), overwrite=True) as tmp:
            tmp.write_text(json.dumps(data))
