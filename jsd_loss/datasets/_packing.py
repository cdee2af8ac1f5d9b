"""Greedy sequence packing that remembers which dataset row every token came from."""

from typing import Any, Dict, List, Tuple

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX
from tqdm import tqdm

from jsd_loss.datasets._row_ids import PAD_ROW_ID

# one pack as stored: tokens and labels (unpadded, int32), its documents' lengths and rows
_Pack = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class PackedRowsDataset(Dataset):
    """
    Greedy packing of a tokenized dataset, in dataset order, into sequences of exactly
    ``max_seq_len`` tokens, recording the dataset row of every token.

    Like torchtune's :class:`~torchtune.datasets.PackedDataset` with
    ``split_across_pack=False``, every row is tokenized once, at construction; a row that does
    not fit in what is left of the current pack starts the next one (no row is ever split);
    each pack is padded at the end. Unlike it, a pack also records ``row_ids`` (the index in
    ``ds`` of the row each token came from, :data:`~jsd_loss.datasets.PAD_ROW_ID` for
    padding), and the first label of each document is set to ``ignore_idx``: with labels
    shifted for next-token prediction (position ``t`` predicts label ``t + 1``), the last
    position of a document would otherwise predict the first token of the next one. The
    positions that are trained are then exactly those of the rows unpacked, whose first label
    is never predicted either.

    For ``max_seq_len`` 6 and rows 0, 1, 2 of 3, 2 and 4 tokens::

        tokens    = [[a0, a1, a2, b0, b1, pad], [c0, c1, c2, c3, pad, pad]]
        labels    = [[-100, la1, la2, -100, lb1, -100], [-100, lc1, lc2, lc3, -100, -100]]
        input_pos = [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
        row_ids   = [[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]]
        seq_lens  = [[3, 2, 1], [4, 2]]

    Padding is a last document of its own (in ``seq_lens`` and ``input_pos``), as in
    torchtune, so :func:`collate_packed_rows` (or torchtune's ``padded_collate_packed``)
    gives every row of the attention mask at least one allowed key.

    Args:
        ds (Dataset): map-style dataset of ``{"tokens", "labels"}`` samples (lists of ints),
            each at most ``max_seq_len`` tokens long (tokenizers truncate to it).
        max_seq_len (int): length of every pack.
        padding_idx (int): token id of padding. Default: 0
        ignore_idx (int): label of padding and of each document's first token. Default: -100

    Raises:
        ValueError: if ``max_seq_len`` is not a positive int, or a row is empty, longer than
            ``max_seq_len`` or has not as many labels as tokens.
    """

    def __init__(
        self,
        ds: Dataset,
        *,
        max_seq_len: int,
        padding_idx: int = 0,
        ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX,
    ) -> None:
        if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
            raise ValueError(f"packing needs max_seq_len, a positive int, got {max_seq_len!r}")
        self.ds = ds
        self.max_seq_len = max_seq_len
        self.padding_idx = padding_idx
        self.ignore_idx = ignore_idx
        self.packs: List[_Pack] = []
        self._pack()

    def _pack(self) -> None:
        tokens: List[int] = []
        labels: List[int] = []
        seq_lens: List[int] = []
        rows: List[int] = []
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for row in tqdm(range(len(self.ds)), desc="Packing dataset", dynamic_ncols=True, disable=rank != 0):
            sample = self.ds[row]
            row_tokens, row_labels = sample["tokens"], sample["labels"]
            n = len(row_tokens)
            if n != len(row_labels):
                raise ValueError(f"row {row} has {n} tokens but {len(row_labels)} labels")
            if n == 0:
                raise ValueError(f"row {row} has no tokens: there is nothing to pack")
            if n > self.max_seq_len:
                raise ValueError(
                    f"row {row} has {n} tokens, more than max_seq_len={self.max_seq_len}: "
                    "packing never splits a row (the tokenizer's max_seq_len truncates rows)"
                )
            if len(tokens) + n > self.max_seq_len:
                self._add_pack(tokens, labels, seq_lens, rows)
                tokens, labels, seq_lens, rows = [], [], [], []
            tokens.extend(row_tokens)
            labels.append(self.ignore_idx)
            labels.extend(row_labels[1:])
            seq_lens.append(n)
            rows.append(row)
        if seq_lens:
            self._add_pack(tokens, labels, seq_lens, rows)

    def _add_pack(self, tokens: List[int], labels: List[int], seq_lens: List[int], rows: List[int]) -> None:
        self.packs.append((
            torch.tensor(tokens, dtype=torch.int32),
            torch.tensor(labels, dtype=torch.int32),
            torch.tensor(seq_lens, dtype=torch.long),
            torch.tensor(rows, dtype=torch.long),
        ))

    def __len__(self) -> int:
        return len(self.packs)

    def rows_of(self, index: int) -> List[int]:
        """The dataset rows packed into pack ``index``, in order."""
        return self.packs[index][3].tolist()

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        """
        Returns:
            Dict[str, torch.Tensor]: ``tokens``, ``labels``, ``input_pos`` and ``row_ids``,
            int64 of length ``max_seq_len``, and ``seq_lens`` (documents then padding,
            summing to ``max_seq_len``), torchtune's ``PACK_TYPE`` plus ``row_ids``.
        """
        tokens, labels, seq_lens, rows = self.packs[index]
        num_padding = self.max_seq_len - len(tokens)
        if num_padding:
            seq_lens = torch.cat([seq_lens, torch.tensor([num_padding])])
            rows = torch.cat([rows, torch.tensor([PAD_ROW_ID])])
        starts = torch.cumsum(seq_lens, 0) - seq_lens
        positions = torch.arange(self.max_seq_len)
        return {
            "tokens": F.pad(tokens.long(), (0, num_padding), value=self.padding_idx),
            "labels": F.pad(labels.long(), (0, num_padding), value=self.ignore_idx),
            "input_pos": positions - torch.repeat_interleave(starts, seq_lens),
            "seq_lens": seq_lens,
            "row_ids": torch.repeat_interleave(rows, seq_lens),
        }


def block_causal_mask(seq_lens: List[torch.Tensor]) -> torch.Tensor:
    """
    Dense block-causal attention masks of packs: position ``q`` may attend to ``k`` when
    both lie in the same document and ``k <= q``.

    Args:
        seq_lens (List[torch.Tensor]): per pack, the lengths of its documents, each list
            summing to the same length T.

    Returns:
        torch.Tensor: bool (B, T, T), True where attention is allowed.
    """
    document_ids = torch.stack([torch.repeat_interleave(torch.arange(len(s)), s) for s in seq_lens])
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return (document_ids[:, :, None] == document_ids[:, None, :]) & causal


def collate_packed_rows(batch: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """
    Batch of packs from :class:`PackedRowsDataset`.

    The mask is dense on every device (torchtune's ``padded_collate_packed`` builds a flex
    ``BlockMask`` on CUDA instead), so a batch means the same everywhere and every model
    attention path (SDPA) takes it.

    Args:
        batch (List[Dict[str, Any]]): packs, as :meth:`PackedRowsDataset.__getitem__` gives them.

    Returns:
        Dict[str, torch.Tensor]: ``tokens``, ``labels``, ``input_pos``, ``row_ids``, each (B, T)
        int64, and ``mask`` (B, T, T) bool block-causal.
    """
    stacked = {key: torch.stack([pack[key] for pack in batch]) for key in ("tokens", "labels", "input_pos", "row_ids")}
    return {**stacked, "mask": block_causal_mask([pack["seq_lens"] for pack in batch])}
