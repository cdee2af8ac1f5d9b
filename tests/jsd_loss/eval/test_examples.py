import json

import pytest

from jsd_loss.eval import load_examples, round_robin_by_category
from tests.jsd_loss.eval.conftest import ROWS


def test_eval_subset_covers_every_category():
    picked = round_robin_by_category(ROWS, 3)
    assert [r["category"] for r in picked] == ["open_qa", "summarization", "information_extraction"]
    assert round_robin_by_category(ROWS, 10) == [ROWS[i] for i in (0, 1, 3, 2, 4)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_fields_are_renamed_and_optional_ones_defaulted(tmp_path):
    src = _write(tmp_path / "a.jsonl", [{"q": "Why?", "a": "Because.", "kind": "open_qa"}, {"q": "Who?", "a": "Me."}])
    examples = load_examples(src, instruction_field="q", response_field="a", category_field="kind")
    assert examples == [
        {"instruction": "Why?", "context": "", "response": "Because.", "category": "open_qa"},
        {"instruction": "Who?", "context": "", "response": "Me.", "category": "all"},
    ]
    assert load_examples(src, max_rows=1, instruction_field="q", response_field="a", category_field="kind") == examples[:1]


def test_bad_sets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks the field 'answer'"):
        load_examples(_write(tmp_path / "b.jsonl", ROWS), response_field="answer")
    with pytest.raises(ValueError, match="context/category fields must be strings"):
        load_examples(_write(tmp_path / "c.jsonl", [dict(ROWS[0], context=["x"])]))
    with pytest.raises(ValueError, match="is empty"):  # none of these rows is in the Dolly eval split
        load_examples(_write(tmp_path / "d.jsonl", [dict(ROWS[0], category="creative_writing")]), split="eval")


def test_eval_split_is_the_held_out_dolly_subset(tmp_path):
    from jsd_loss.datasets import is_eval_row

    src = _write(tmp_path / "e.jsonl", [dict(r, instruction=f"{r['instruction']} {i}", category="closed_qa")
                                        for i in range(200) for r in ROWS[:1]])
    kept = load_examples(src, split="eval")
    assert kept and len(kept) < 200 and all(is_eval_row(e) for e in kept)
