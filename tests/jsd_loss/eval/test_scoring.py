import math

import numpy as np
import pytest

from jsd_loss.eval import answer_scores
from jsd_loss.metrics import token_f1
from tests.jsd_loss.eval.conftest import ROWS


def test_answer_scores_by_hand():
    outputs = ["Paris.", "A dog sat.", "Blue", "in 1889", "Hello"]
    s = answer_scores(outputs, ROWS)
    assert s["overall"]["exact_match"] == pytest.approx(2 / 5)
    assert s["per_example"]["f1"] == [1.0, token_f1("A dog sat.", "A cat sat."), 1.0, token_f1("in 1889", "1889"), 0.0]
    assert s["overall"]["f1"] == pytest.approx(np.mean(s["per_example"]["f1"]))
    assert s["per_category"]["open_qa"]["n"] == 3
    assert s["per_category"]["open_qa"]["exact_match"] == pytest.approx(2 / 3)
    assert s["per_category"]["information_extraction"]["f1"] == pytest.approx(token_f1("in 1889", "1889"))
    assert list(s["per_category"]) == sorted(s["per_category"])
    assert set(s["per_example"]) == {"rougeL", "f1"}


def test_model_entry_numbers(entries):
    teacher, jsd0 = entries[0], entries[1]
    assert teacher["teacher_rougeL"] == pytest.approx(1.0) and teacher["teacher_top1_agreement"] == 1.0
    assert teacher["exact_match"] == 1.0 and "training" not in teacher
    assert jsd0["teacher_top1_agreement"] == pytest.approx(6 / 8)  # two of eight argmaxes differ
    assert jsd0["nll_per_token"] == pytest.approx(9.0 / 8) and jsd0["perplexity"] == pytest.approx(math.exp(9.0 / 8))
    assert jsd0["training"]["loss"]["final"] == pytest.approx(1.5)
    assert jsd0["curves"]["kd_loss"] == [[1, 2.0], [2, 1.5], [3, 1.0], [4, 0.75]]
    assert jsd0["per_example"]["teacher_rougeL"][0] == pytest.approx(1.0)  # "Paris" vs "Paris."
    # rows 0, 2, 4 are open_qa: NLL 2 + 1 + 2 over 2 + 1 + 2 tokens; row 1 summarization 3 / 2
    assert jsd0["per_category"]["open_qa"]["nll_per_token"] == pytest.approx(5.0 / 5)
    assert jsd0["per_category"]["summarization"]["nll_per_token"] == pytest.approx(3.0 / 2)
    assert jsd0["per_category"]["information_extraction"]["nll_per_token"] == pytest.approx(1.0 / 1)
    assert [jsd0["per_category"][c]["reference_tokens"] for c in ("information_extraction", "open_qa", "summarization")] == [1, 5, 2]
