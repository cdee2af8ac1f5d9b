"""A batch's cached teacher, laid out like the batch, padded or packed."""

import pytest
import torch

from jsd_loss.teacher import RowNotCachedError, TopKTeacherCache, build_topk_cache, cached_teacher
from tests.jsd_loss.pruning._tiny import tiny_teacher, tune_model
from tests.jsd_loss.teacher.test_build import VOCAB, Rows, manifest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    config, state, _ = tiny_teacher(seed=3, vocab_size=VOCAB)
    teacher = tune_model(config, state).float().eval()
    path = tmp_path_factory.mktemp("cache") / "c"
    build_topk_cache(teacher, Rows(), path, manifest([0, 1, 2, 3, 4, 5]))
    return TopKTeacherCache(path)


def layout(rows, width, packed):
    """tokens, shifted labels and row ids of ``rows`` laid out by hand: one row per
    sequence (right-padded) or all rows packed into one sequence."""
    ds = Rows()
    sequences = [[r] for r in rows] if not packed else [list(rows)]
    tokens = torch.zeros(len(sequences), width, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100)
    row_ids = torch.full((len(sequences), width), -1)
    for b, seq in enumerate(sequences):
        at = 0
        for r in seq:
            t, l = ds[r]["tokens"], ds[r]["labels"]
            n = len(t)
            tokens[b, at : at + n] = torch.tensor(t)
            # position p predicts label p + 1 of the same row; a row's last position predicts nothing
            labels[b, at : at + n - 1] = torch.tensor(l[1:])
            row_ids[b, at : at + n] = r
            at += n
    return tokens, labels, row_ids


@pytest.mark.parametrize("packed", [False, True])
def test_entries_land_on_each_rows_trained_positions(cache, packed):
    rows = [3, 0, 5]
    tokens, labels, row_ids = layout(rows, 40, packed)
    top = cached_teacher(cache, tokens, labels, row_ids)
    assert top.ids.shape == (*labels.shape, cache.manifest.k) and top.tail_log_mass.shape == labels.shape
    for r in rows:
        where = (row_ids == r) & (labels != -100)
        ids, log_probs, tail = cache.row(r)
        assert torch.equal(top.ids[where], ids)
        assert torch.equal(top.log_probs[where], log_probs)
        assert torch.equal(top.tail_log_mass[where], tail)
    # untrained positions hold a proper distribution (k distinct ids, all mass on them)
    rest = labels == -100
    assert torch.allclose(top.log_probs[rest].exp().sum(-1), torch.ones(int(rest.sum())))
    assert torch.equal(top.ids[rest].sort(-1).values, torch.arange(cache.manifest.k).expand(int(rest.sum()), -1))


def test_mismatched_rows_are_refused(cache):
    tokens, labels, row_ids = layout([1, 2], 24, packed=False)
    missing = row_ids.clone()
    missing[missing == 2] = 9
    with pytest.raises(RowNotCachedError, match="row 9 is not in the teacher cache"):
        cached_teacher(cache, tokens, labels, missing)
    edited = tokens.clone()
    edited[0, 0] += 1
    with pytest.raises(ValueError, match="row 1: its tokens differ"):
        cached_teacher(cache, edited, labels, row_ids)
    relabelled = labels.clone()
    relabelled[0, 0] = 7  # a prompt position now trained (as with train_on_input)
    with pytest.raises(ValueError, match="row 1: .* trained positions but the teacher cache holds"):
        cached_teacher(cache, tokens, relabelled, row_ids)
