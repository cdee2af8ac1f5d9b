"""databricks-dolly-15k as ChatML SFT samples, with a fixed, deterministic held-out eval split."""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch.utils.data import Dataset
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, Message
from torchtune.modules.transforms import Transform

from jsd_loss.datasets._packing import PackedRowsDataset

_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "databricks-dolly-15k"
DEFAULT_DOLLY_PATH = str(_SHARED / "databricks-dolly-15k.jsonl")
HUB_DOLLY = "databricks/databricks-dolly-15k"

# categories whose answers are grounded in the given context, so a reference answer
# is meaningful for ROUGE/F1: the eval split is drawn from these only
EVAL_CATEGORIES = ("closed_qa", "information_extraction", "summarization")
EVAL_PERMILLE = 50  # about 5% of those rows (229 of 4467 in the 15,011-row release)


def is_eval_row(row: Mapping[str, str]) -> bool:
    """Deterministic split by a hash of the prompt, so a prompt repeated with another
    response (Dolly has 187 such rows) never straddles train and eval."""
    if row["category"] not in EVAL_CATEGORIES:
        return False
    key = (row["instruction"] + "\x00" + row["context"]).encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) % 1000 < EVAL_PERMILLE


def prompt_text(row: Mapping[str, str]) -> str:
    """The user turn: the instruction, then the context when there is one."""
    if row["context"].strip():
        return f"{row['instruction']}\n\n{row['context']}"
    return row["instruction"]


def load_rows(
    source: str,
    fields: Sequence[str] = ("instruction", "context", "response", "category"),
    sha256: Optional[str] = None,
) -> List[Dict[str, str]]:
    """Rows of a local JSONL file, or of a HF hub dataset name (needs the hub).

    Every row is checked before anything else happens: a missing field, a non-string value,
    a line that is not UTF-8 JSON raises ``ValueError`` naming the file and line. A changed
    character inside a string, or a file cut at a line end, still reads as rows: ``sha256``
    (the file's expected digest, e.g. from ``PROVENANCE.md``) refuses any change, naming the file.
    """
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset file not found: {path} (the default is ../shared/data/databricks-dolly-15k; "
                f"with hub access use source={HUB_DOLLY!r})"
            )
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise ValueError(f"{path} is corrupted or another file: its sha256 is "
                             f"{hashlib.sha256(data).hexdigest()}, the config expects {sha256}")
        rows = []
        for line_no, raw in enumerate(data.split(b"\n"), 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    rows.append(json.loads(line))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_no} is not valid UTF-8: {e}") from e
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no} is not valid JSON: {e}") from e
        where = str(path)
    elif sha256 is not None:
        raise ValueError(f"sha256 checks a local dataset file; {source!r} is a hub dataset name")
    else:
        from datasets import load_dataset

        rows = [dict(r) for r in load_dataset(source, split="train")]
        where = source
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{where} row {i} is not a JSON object")
        for field in fields:
            if field not in row:
                raise ValueError(f"{where} row {i} lacks the field {field!r}")
            if not isinstance(row[field], str):
                raise ValueError(f"{where} row {i} field {field!r} is not a string")
    if not rows:
        raise ValueError(f"{where} holds no rows")
    return rows


def split_rows(rows: List[Dict[str, str]], split: str) -> List[Dict[str, str]]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    return [r for r in rows if is_eval_row(r) == want_eval]


class DollySFTDataset(Dataset):
    """Tokenized ChatML samples: ``tokens`` and ``labels`` (prompt tokens set to -100)."""

    def __init__(self, rows: List[Dict[str, str]], tokenizer: Transform, train_on_input: bool = False):
        self.rows = rows
        self._tokenizer = tokenizer
        self._train_on_input = train_on_input

    def __len__(self) -> int:
        return len(self.rows)

    def messages(self, index: int) -> List[Message]:
        row = self.rows[index]
        return [
            Message(role="user", content=prompt_text(row), masked=not self._train_on_input),
            Message(role="assistant", content=row["response"]),
        ]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = self._tokenizer({"messages": self.messages(index)})
        tokens, mask = sample["tokens"], sample["mask"]
        labels = [CROSS_ENTROPY_IGNORE_IDX if m else t for t, m in zip(tokens, mask)]
        return {"tokens": tokens, "labels": labels}

    def fingerprint(self) -> str:
        """SHA-256 of the rows and the label masking: with the tokenizer (hashed apart), what
        decides every sample, so a teacher cache can check it without tokenizing anything."""
        digest = hashlib.sha256(json.dumps(self.rows, sort_keys=True).encode())
        digest.update(f"train_on_input={self._train_on_input}".encode())
        return digest.hexdigest()


def dolly_dataset(
    tokenizer: Transform,
    source: str = DEFAULT_DOLLY_PATH,
    split: str = "train",
    max_rows: Optional[int] = None,
    categories: Optional[Sequence[str]] = None,
    train_on_input: bool = False,
    packed: bool = False,
    sha256: Optional[str] = None,
) -> Union[DollySFTDataset, PackedRowsDataset]:
    """
    databricks-dolly-15k for SFT and distillation.

    With ``packed=True`` (``dataset: {..., packed: True}`` in a recipe config) the rows are
    tokenized once, up front, and packed greedily in dataset order into sequences of exactly
    ``tokenizer.max_seq_len`` tokens (padded at the end; rows are never split, the tokenizer
    truncates them to ``max_seq_len``), so a batch holds no per-row padding. Batches of packs
    carry a block-causal ``mask`` and per-document ``input_pos``, so no token attends across
    documents, and the first label of every document is ignored, so the trained positions are
    exactly those of the unpacked rows (see :class:`~jsd_loss.datasets.PackedRowsDataset`).

    Args:
        tokenizer (Transform): a model tokenizer (e.g. ``smollm2_tokenizer``).
        source (str): local JSONL path (default: ``../shared/data/databricks-dolly-15k``)
            or the hub dataset name ``databricks/databricks-dolly-15k``.
        split (str): ``"train"`` or ``"eval"``; eval is a fixed 5% hash-selected subset
            of the closed_qa, information_extraction and summarization rows, never in train.
        max_rows (Optional[int]): keep only the first rows of the split (quick runs).
        categories (Optional[Sequence[str]]): keep only these categories.
        train_on_input (bool): also train on prompt tokens. Default: False
        packed (bool): pack the tokenized rows into sequences of ``tokenizer.max_seq_len``
            tokens. Default: False
        sha256 (Optional[str]): the file's expected SHA-256 (the shared copy's is in its
            ``PROVENANCE.md``): any other file, or a corrupted one, is refused naming it.

    Returns:
        Union[DollySFTDataset, PackedRowsDataset]: map-style dataset of ``{"tokens", "labels"}``
        rows or, packed, of packs that also record each token's row (its index in the
        unpacked dataset).

    Raises:
        ValueError: if ``packed`` and the tokenizer has no ``max_seq_len`` (before any row is
            read or tokenized), or the selection leaves no rows.
    """
    max_seq_len = getattr(tokenizer, "max_seq_len", None)
    if packed and max_seq_len is None:
        raise ValueError(
            f"packed=True needs the tokenizer's max_seq_len (the length of every pack), but "
            f"{type(tokenizer).__name__} has none: set tokenizer.max_seq_len in the config"
        )
    rows = split_rows(load_rows(source, sha256=sha256), split)
    if categories is not None:
        unknown = set(categories) - {r["category"] for r in rows}
        if unknown:
            raise ValueError(f"no {split} rows in categories {sorted(unknown)}")
        rows = [r for r in rows if r["category"] in set(categories)]
    if max_rows is not None:
        rows = rows[:max_rows]
    if not rows:
        raise ValueError(f"the {split} split of {source} is empty")
    ds = DollySFTDataset(rows, tokenizer, train_on_input)
    if packed:
        return PackedRowsDataset(ds, max_seq_len=max_seq_len, padding_idx=tokenizer.pad_id)
    return ds
