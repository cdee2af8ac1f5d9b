import pytest

from jsd_loss.datasets import DollySFTDataset, PackedRowsDataset, dolly_dataset
from jsd_loss.datasets._dolly import load_rows
from tests.conftest import DOLLY
from tests.fuzz import check, fuzz
from tests.jsd_loss.datasets.fakes import IGNORE, NoMaxSeqLenTokenizer, WordTokenizer


def test_packed_needs_the_tokenizers_max_seq_len_before_any_row_is_tokenized():
    for tokenizer in (WordTokenizer(max_seq_len=None), NoMaxSeqLenTokenizer()):
        with pytest.raises(ValueError, match=r"packed=True needs the tokenizer's max_seq_len .* set "
                                             r"tokenizer.max_seq_len in the config"):
            dolly_dataset(tokenizer, source=str(DOLLY), packed=True)
        assert getattr(tokenizer, "calls", 0) == 0
    assert isinstance(dolly_dataset(WordTokenizer(max_seq_len=None), source=str(DOLLY), max_rows=3), DollySFTDataset)


def test_packed_dolly_holds_the_unpacked_rows_tokenized_once():
    tokenizer = WordTokenizer(max_seq_len=128)
    rows = dolly_dataset(tokenizer, source=str(DOLLY), max_rows=40)
    unpacked = [rows[i] for i in range(len(rows))]
    tokenizer.calls = 0
    packed = dolly_dataset(tokenizer, source=str(DOLLY), max_rows=40, packed=True)
    assert tokenizer.calls == 40  # every row once, at construction
    assert isinstance(packed, PackedRowsDataset) and len(packed) < 40
    seen = []
    for i in range(len(packed)):
        pack = packed[i]
        assert pack["tokens"].shape == (128,)
        for row in dict.fromkeys(r for r in pack["row_ids"].tolist() if r != -1):
            at = pack["row_ids"] == row
            assert pack["tokens"][at].tolist() == unpacked[row]["tokens"]
            assert pack["labels"][at].tolist() == [IGNORE] + unpacked[row]["labels"][1:]
            seen.append(row)
    assert seen == list(range(40)) and tokenizer.calls == 40


def test_fuzzed_dolly_files_are_refused_naming_the_file_or_caught_by_the_checksum(tmp_path):
    """Cuts and bit flips in a 12-row JSONL: broken JSON or UTF-8 is refused naming file:line; a
    changed letter, or a cut at a line end, reads as other rows: ``sha256`` refuses every one."""
    (tmp_path / "d").mkdir()
    with open(DOLLY, "rb") as f:
        (tmp_path / "d" / "dolly.jsonl").write_bytes(b"".join(next(f) for _ in range(12)))
    counts = check(fuzz("dolly", tmp_path / "d", "dolly.jsonl", seed=3, flips=40), cuts_always_refused=False)
    assert counts["different"] > 0 and counts["error"] > 0, counts


def test_a_dataset_file_of_another_sha256_is_refused(tmp_path):
    import hashlib

    path = tmp_path / "rows.jsonl"
    with open(DOLLY, "rb") as f:
        path.write_bytes(next(f) + next(f))
    right = hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(load_rows(str(path), sha256=right)) == 2
    with pytest.raises(ValueError, match=rf"{path} is corrupted or another file: its sha256 is {right}, the config"):
        dolly_dataset(WordTokenizer(max_seq_len=None), source=str(path), sha256="0" * 64)
    path.write_bytes(path.read_bytes().replace(b'"', b'\xff', 1))
    with pytest.raises(ValueError, match=rf"{path}:1 is not valid UTF-8"):
        load_rows(str(path))
