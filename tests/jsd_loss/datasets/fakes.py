"""Stand-ins for the tests of packing and row ids: random tokenized rows, a dataset builder
that config can name, and a word tokenizer that counts its calls."""

import random
import zlib
from typing import Any, Dict, List, Optional

from torch.utils.data import Dataset

from jsd_loss.datasets import PackedRowsDataset

IGNORE = -100


def random_rows(num_rows: int, max_len: int, seed: int = 0, vocab: int = 1000) -> List[Dict[str, List[int]]]:
    """Rows of 1..max_len tokens (``max_len`` itself included), the first 0..n-1 of them a
    prompt with ignored labels: some rows train on their first token, as with
    ``train_on_input``."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        n = max_len if i % 7 == 3 else rng.randint(1, max_len)
        tokens = [rng.randrange(3, vocab) for _ in range(n)]
        prompt = rng.randint(0, n - 1)
        rows.append({"tokens": tokens, "labels": [IGNORE] * prompt + tokens[prompt:]})
    return rows


class RowsDataset(Dataset):
    def __init__(self, rows: List[Dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return dict(self.rows[index])


def random_rows_dataset(tokenizer, num_rows: int = 30, seed: int = 0, packed: bool = False):
    """A dataset builder as config names one: random rows up to ``tokenizer.max_seq_len``."""
    rows = RowsDataset(random_rows(num_rows, tokenizer.max_seq_len, seed))
    if packed:
        return PackedRowsDataset(rows, max_seq_len=tokenizer.max_seq_len, padding_idx=tokenizer.pad_id)
    return rows


def torchtune_packed_rows(tokenizer, num_rows: int = 30):
    """The random rows packed by torchtune's ``PackedDataset``, which records no rows."""
    from torchtune.datasets import PackedDataset

    return PackedDataset(RowsDataset(random_rows(num_rows, tokenizer.max_seq_len)), max_seq_len=tokenizer.max_seq_len)


class WordTokenizer:
    """Whitespace words hashed to ids, ChatML-like framing, truncation to ``max_seq_len``;
    ``calls`` counts the samples it tokenized."""

    pad_id = 0

    def __init__(self, max_seq_len: Optional[int] = None, vocab: int = 5000):
        self.max_seq_len = max_seq_len
        self.vocab = vocab
        self.calls = 0

    def __call__(self, sample: Dict[str, Any], inference: bool = False) -> Dict[str, Any]:
        self.calls += 1
        tokens, mask = [1], [True]
        for message in sample.pop("messages"):
            ids = [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in message.text_content.split()] + [2]
            tokens += ids
            mask += [message.masked] * len(ids)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return {**sample, "tokens": tokens, "mask": mask}


class NoMaxSeqLenTokenizer:
    """A tokenizer without a ``max_seq_len`` attribute that must never be called."""

    pad_id = 0

    def __call__(self, sample, inference=False):
        raise AssertionError("tokenized a row")
