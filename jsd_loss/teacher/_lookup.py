"""A batch's teacher distributions, read from the cache instead of computed."""

import math
from typing import List

import torch

from jsd_loss.losses import TopKDistribution
from jsd_loss.teacher._fingerprint import token_hash
from jsd_loss.teacher._store import TopKTeacherCache


class RowNotCachedError(KeyError):
    """A batch holds a row the teacher cache lacks."""


def missing_rows(cache: TopKTeacherCache, rows: List[int]) -> List[int]:
    return [r for r in rows if r not in cache]


def cached_teacher(
    cache: TopKTeacherCache,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    row_ids: torch.Tensor,
    ignore_index: int = -100,
) -> TopKDistribution:
    """
    The cached teacher distributions laid out like the batch: ``(B, T, k)`` ids and
    log-probs and ``(B, T)`` tail log-masses, filled at every position whose (shifted)
    label is trained on; elsewhere a valid placeholder that no loss reads.

    Each row's tokens are checked against the hash stored with its cache entry, and its
    number of label positions against the number of entries, so a cache built from other
    data, another tokenization or another ``max_seq_len`` cannot be used by mistake.

    Args:
        cache (TopKTeacherCache): the cache.
        tokens (torch.Tensor): input tokens, (B, T).
        labels (torch.Tensor): shifted labels (position t's label is the token at t + 1), (B, T).
        row_ids (torch.Tensor): dataset row of each position, -1 for padding, (B, T); several
            rows per sequence when packed.
        ignore_index (int): label value of untrained positions. Default: -100

    Raises:
        RowNotCachedError: if a row is not in the cache.
        ValueError: if a row's tokens or label count differ from the cached ones.
    """
    batch, width = labels.shape
    k = cache.manifest.k
    ids = torch.arange(k, dtype=torch.long).expand(batch, width, k).clone()
    log_probs = torch.full((batch, width, k), -math.log(k))
    tail = torch.full((batch, width), float("-inf"))
    tokens, labels, row_ids = tokens.cpu(), labels.cpu(), row_ids.cpu()
    for b in range(batch):
        trained = labels[b] != ignore_index
        for row in torch.unique_consecutive(row_ids[b][row_ids[b] >= 0]).tolist():
            if row not in cache:
                raise RowNotCachedError(
                    f"dataset row {row} is not in the teacher cache {cache.cache_dir} ({len(cache)} rows); build "
                    "a cache covering this run (cache_teacher.py with cache.rows: run) or set "
                    "teacher_cache_fallback: live"
                )
            in_row = row_ids[b] == row
            if token_hash(tokens[b][in_row].tolist()) != cache.token_hash(row):
                raise ValueError(
                    f"dataset row {row}: its tokens differ from those the teacher cache {cache.cache_dir} was "
                    "built from (another dataset file, tokenizer or max_seq_len)"
                )
            positions = (in_row & trained).nonzero().squeeze(-1)
            entry = cache.row(row)
            if entry.ids.shape[0] != positions.numel():
                raise ValueError(
                    f"dataset row {row}: {positions.numel()} trained positions but the teacher cache holds "
                    f"{entry.ids.shape[0]} (built with other label masking, e.g. train_on_input)"
                )
            ids[b, positions], log_probs[b, positions], tail[b, positions] = entry
    return TopKDistribution(ids, log_probs, tail)
