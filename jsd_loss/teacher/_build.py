"""Building a top-k teacher cache: one teacher forward per row, resumable shard by shard."""

import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from jsd_loss.losses import topk_from_logits
from jsd_loss.metrics import final_hidden_states
from jsd_loss.teacher._fingerprint import token_hash
from jsd_loss.teacher._store import MANIFEST, CacheManifest, ShardRecord, complete_shards, write_shard

IGNORE_INDEX = -100


def label_positions(labels: List[int], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Positions ``t`` of a row whose next token ``labels[t + 1]`` is trained on: the
    positions a KD loss sees once the recipe has shifted the labels."""
    following = np.asarray(labels[1:], dtype=np.int64)
    return np.nonzero(following != ignore_index)[0]


def prepare_cache_dir(cache_dir: Path, manifest: CacheManifest, overwrite: bool = False) -> List[int]:
    """Create ``cache_dir`` with ``manifest``, or find the shards already done there.

    A cache is resumed only when its manifest matches ``manifest`` in every field; a
    mismatch is refused, naming each differing field, unless ``overwrite`` (which deletes
    the old shards first).

    Returns:
        List[int]: the shards already complete.
    """
    cache_dir = Path(cache_dir)
    if (cache_dir / MANIFEST).is_file():
        old = CacheManifest.read(cache_dir)
        diff = old.mismatches(manifest, [f for f in vars(manifest) if f != "notes"])
        if not diff:
            return complete_shards(cache_dir, old)
        if not overwrite:
            raise ValueError(
                f"{cache_dir} holds a teacher cache built with other settings ({'; '.join(diff)}); "
                "pick another directory, or pass overwrite=True to replace it"
            )
    elif cache_dir.exists() and any(cache_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{cache_dir} exists and is not a teacher cache; pick an empty or new directory")
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    manifest.write(cache_dir)
    return []


def _forward_rows(
    teacher: nn.Module, samples: List[dict], manifest: CacheManifest, device: torch.device, ignore_index: int
) -> List[ShardRecord]:
    """Top-k distributions at every label position of ``samples`` (right-padded; causal
    attention keeps padding out of every real position). Only those positions go through
    the output projection."""
    width = max(len(s["tokens"]) for s in samples)
    tokens = torch.zeros((len(samples), width), dtype=torch.long)
    for b, s in enumerate(samples):
        tokens[b, : len(s["tokens"])] = torch.tensor(s["tokens"])
    positions = [torch.from_numpy(label_positions(s["labels"], ignore_index)) for s in samples]
    hidden = final_hidden_states(teacher, tokens.to(device))
    selected = torch.cat([hidden[b, p.to(device)] for b, p in enumerate(positions)])
    top = topk_from_logits(teacher.output(selected).float(), manifest.k, manifest.temperature)
    records, start = [], 0
    for s, p in zip(samples, positions):
        n = len(p)
        records.append(ShardRecord(
            row=s["row"], token_hash=token_hash(s["tokens"]),
            ids=top.ids[start : start + n].cpu().numpy(),
            log_probs=top.log_probs[start : start + n].cpu().numpy(),
            tail_log_mass=top.tail_log_mass[start : start + n].cpu().numpy(),
        ))
        start += n
    return records


@torch.no_grad()
def build_topk_cache(
    teacher: nn.Module,
    dataset,
    cache_dir: Path,
    manifest: CacheManifest,
    *,
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    ignore_index: int = IGNORE_INDEX,
    overwrite: bool = False,
    on_shard: Optional[Callable[[int, float], None]] = None,
) -> CacheManifest:
    """
    Run ``teacher`` over ``manifest.rows`` of ``dataset`` and store, at each label position,
    its top-``k`` token ids and log-probabilities and the log of its tail mass.

    Rows are processed one shard (``manifest.shard_rows`` rows) at a time, sorted by length
    within the shard so batches carry little padding; each finished shard is renamed into
    place, so a killed build resumes at the first missing shard.

    Args:
        teacher (nn.Module): a torchtune ``TransformerDecoder`` (evaluation mode is set here).
        dataset: a map-style SFT dataset of ``{"tokens", "labels"}`` lists; rows are its indices.
        cache_dir (Path): where the cache goes.
        manifest (CacheManifest): what to cache and what it is built from.
        batch_size (int): rows per teacher forward. Default: 8
        device (torch.device): where the teacher runs. Default: CPU
        ignore_index (int): label value of untrained positions. Default: -100
        overwrite (bool): replace a cache of other settings in ``cache_dir``. Default: False
        on_shard (Optional[Callable[[int, float], None]]): called with the number of rows and
            the seconds each finished shard took (progress logging).

    Returns:
        CacheManifest: the manifest of the complete cache.
    """
    if max(manifest.rows, default=-1) >= len(dataset) or min(manifest.rows, default=0) < 0:
        raise IndexError(f"the rows to cache reach {max(manifest.rows)} but the dataset has {len(dataset)}")
    vocab = teacher.tok_embeddings.num_embeddings
    if vocab != manifest.vocab_size:
        raise ValueError(f"the teacher has {vocab} tokens but the manifest says vocab_size={manifest.vocab_size}")
    done = set(prepare_cache_dir(cache_dir, manifest, overwrite))
    teacher.eval()
    todo = [i for i in range(manifest.num_shards) if i not in done]
    bar = tqdm(total=len(manifest.rows), initial=sum(len(manifest.shard(i)) for i in done), unit="row",
               desc="teacher cache")
    for i in todo:
        t0 = time.perf_counter()
        samples = [{**dataset[row], "row": row} for row in manifest.shard(i)]
        samples.sort(key=lambda s: len(s["tokens"]))
        records = []
        for start in range(0, len(samples), batch_size):
            records += _forward_rows(teacher, samples[start : start + batch_size], manifest, device, ignore_index)
            bar.update(len(samples[start : start + batch_size]))
        write_shard(cache_dir, i, manifest, records)
        if on_shard is not None:
            on_shard(len(samples), time.perf_counter() - t0)
    bar.close()
    return manifest
