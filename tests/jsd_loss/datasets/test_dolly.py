import pytest

from jsd_loss.datasets import DollySFTDataset, PackedRowsDataset, dolly_dataset
from tests.conftest import DOLLY
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
