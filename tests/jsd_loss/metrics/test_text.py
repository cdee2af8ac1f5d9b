import pytest

from jsd_loss.metrics import exact_match, normalize_answer, rouge, token_f1


def test_token_f1_hand_computed():
    # pred tokens: cat sat on mat ; ref tokens: cat is on mat  (articles dropped)
    # overlap 3 -> precision 3/4, recall 3/4, F1 0.75
    assert token_f1("The cat sat on the mat.", "A cat is on the mat") == pytest.approx(0.75)
    assert token_f1("Paris", "paris!") == 1.0 and exact_match("Paris", "paris!") == 1.0
    assert token_f1("London", "Paris") == 0.0
    # repeated tokens count with multiplicity: pred "x y y", ref "y" -> overlap 1, P 1/3, R 1
    assert token_f1("x y y", "y") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_empty_strings():
    assert token_f1("", "") == 1.0 and exact_match("", "") == 1.0
    assert token_f1("", "something") == 0.0 and token_f1("something", "") == 0.0
    assert token_f1("the", "") == 1.0  # normalises to empty on both sides


def test_unicode_is_kept():
    assert normalize_answer("  Ünïcödé   Café, naïve! ") == "ünïcödé café naïve"
    assert token_f1("東京 タワー", "東京 タワー") == 1.0


def test_rouge_hand_computed():
    # ROUGE-1: overlap {the, cat, on, mat... } computed by hand on stemmed unigrams
    # pred: "the cats sat" -> the, cat, sat ; ref: "the cat sat down" -> the, cat, sat, down
    # P = 3/3, R = 3/4 -> F = 6/7 ; ROUGE-2 bigrams: pred (the cat)(cat sat), ref (the cat)(cat sat)(sat down)
    # -> P 2/2, R 2/3 -> F 0.8 ; ROUGE-L LCS = 3 -> same as ROUGE-1
    (r,) = rouge(["the cats sat"], ["the cat sat down"])
    assert r["rouge1"] == pytest.approx(6 / 7)
    assert r["rouge2"] == pytest.approx(0.8)
    assert r["rougeL"] == pytest.approx(6 / 7)
    (empty,) = rouge([""], ["reference"])
    assert empty["rouge1"] == 0.0
    with pytest.raises(ValueError):
        rouge(["a"], [])
