"""The cache builder against the teacher's own full-softmax distributions in float64."""

import copy
import json

import numpy as np
import pytest
import torch

from jsd_loss.teacher import (
    CacheManifest,
    TopKTeacherCache,
    build_topk_cache,
    label_positions,
    prepare_cache_dir,
    token_hash,
)
from tests.jsd_loss.pruning._tiny import tiny_teacher, tune_model

VOCAB = 128


class Rows(torch.utils.data.Dataset):
    """SFT-like rows of random tokens: a prompt (labels -100) then a response."""

    def __init__(self, n=11, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for _ in range(n):
            prompt, response = int(torch.randint(2, 9, (), generator=g)), int(torch.randint(0, 12, (), generator=g))
            tokens = torch.randint(0, VOCAB, (prompt + response,), generator=g).tolist()
            self.samples.append({"tokens": tokens, "labels": [-100] * prompt + tokens[prompt:]})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def manifest(rows, **overrides):
    args = dict(k=5, vocab_size=VOCAB, temperature=1.0, max_seq_len=64, teacher_sha256="t", tokenizer_sha256="z",
                dataset_sha256="d", rows=rows, shard_rows=4, log_prob_dtype="float32")
    return CacheManifest(**{**args, **overrides})


@pytest.fixture(scope="module")
def models():
    """The tiny teacher as torchtune runs it (cached) and as transformers does (reference)."""
    config, state, hf = tiny_teacher(seed=3, vocab_size=VOCAB, initializer_range=0.3)
    return tune_model(config, state).float().eval(), hf


@pytest.fixture(scope="module")
def teacher(models):
    return models[0]


def reference_row(hf_model, sample, k, temperature):
    """Top-k and tail of transformers' teacher run on this row alone, in float64."""
    with torch.no_grad():
        logits = copy.deepcopy(hf_model).double()(torch.tensor([sample["tokens"]])).logits[0]
    positions = label_positions(sample["labels"])
    log_p = torch.log_softmax(logits[positions] / temperature, -1)
    top = log_p.topk(k, -1)
    tail = torch.log1p(-top.values.exp().sum(-1))
    return top.indices, top.values, tail


@pytest.mark.parametrize("temperature,dtype,tol", [(1.0, "float32", 1e-5), (2.0, "float16", 2e-3)])
def test_cached_rows_equal_the_teachers_float64_top_k(tmp_path, models, temperature, dtype, tol):
    teacher, hf_model = models
    ds = Rows()
    rows = [7, 0, 3, 10, 5, 1, 2]  # any order, a subset
    m = manifest(rows, temperature=temperature, log_prob_dtype=dtype)
    build_topk_cache(teacher, ds, tmp_path / "c", m, batch_size=3)
    cache = TopKTeacherCache(tmp_path / "c")
    assert sorted(cache.rows) == sorted(rows) and 4 not in cache
    for row in rows:
        ids, log_probs, tail = cache.row(row)
        ref_ids, ref_lp, ref_tail = reference_row(hf_model, ds[row], m.k, temperature)
        assert ids.shape == (len(label_positions(ds[row]["labels"])), m.k)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(log_probs.double(), ref_lp, atol=tol * 10, rtol=tol)
        torch.testing.assert_close(tail.double(), ref_tail, atol=1e-4, rtol=1e-4)
        assert cache.token_hash(row) == token_hash(ds[row]["tokens"])
    assert m.bytes_per_token() == 5 * (2 + np.dtype(dtype).itemsize) + 4


def test_a_killed_build_resumes_without_redoing_finished_shards(tmp_path, teacher):
    ds, m = Rows(), manifest(list(range(11)))

    def die_after_first(rows, seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_topk_cache(teacher, ds, tmp_path / "c", m, on_shard=die_after_first)
    first = (tmp_path / "c" / "shard_00000" / "ids.bin").stat()
    assert not (tmp_path / "c" / "shard_00001").exists()
    with pytest.raises(FileNotFoundError, match="incomplete: 2 of 3 shards missing"):
        TopKTeacherCache(tmp_path / "c")
    seen = []
    build_topk_cache(teacher, ds, tmp_path / "c", m, on_shard=lambda r, s: seen.append(r))
    assert seen == [4, 3]  # only the two missing shards ran
    assert (tmp_path / "c" / "shard_00000" / "ids.bin").stat().st_mtime_ns == first.st_mtime_ns
    build_topk_cache(teacher, ds, tmp_path / "fresh", m)
    resumed, fresh = TopKTeacherCache(tmp_path / "c"), TopKTeacherCache(tmp_path / "fresh")
    for row in range(11):
        for a, b in zip(resumed.row(row), fresh.row(row)):
            assert torch.equal(a, b)


def test_a_cache_of_other_settings_is_refused_and_kept(tmp_path, teacher):
    ds = Rows()
    build_topk_cache(teacher, ds, tmp_path / "c", manifest([0, 1]))
    before = (tmp_path / "c" / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"k: cache has 5, expected 6.*teacher_sha256"):
        prepare_cache_dir(tmp_path / "c", manifest([0, 1], k=6, teacher_sha256="other"))
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not a teacher cache"):
        prepare_cache_dir(tmp_path / "junk", manifest([0]))
    prepare_cache_dir(tmp_path / "c", manifest([0, 1], k=6), overwrite=True)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["k"] == 6


def test_bad_requests_fail_before_any_forward(tmp_path, teacher):
    with pytest.raises(IndexError, match="reach 11 but the dataset has 11"):
        build_topk_cache(teacher, Rows(), tmp_path / "c", manifest([0, 11]))
    with pytest.raises(ValueError, match="vocab_size=64"):
        build_topk_cache(teacher, Rows(), tmp_path / "c", manifest([0], vocab_size=64))
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="k must be in"):
        manifest([0], k=VOCAB + 1)
    with pytest.raises(ValueError, match="duplicates"):
        manifest([0, 0])
    with pytest.raises(ValueError, match="log_prob_dtype"):
        manifest([0], log_prob_dtype="int8")


def test_rows_without_label_positions_are_cached_empty(tmp_path, teacher):
    ds = Rows()
    ds.samples[2] = {"tokens": [5, 6, 7], "labels": [-100, -100, -100]}
    build_topk_cache(teacher, ds, tmp_path / "c", manifest([2, 3]))
    ids, log_probs, tail = TopKTeacherCache(tmp_path / "c").row(2)
    assert ids.shape == (0, 5) and tail.shape == (0,)
