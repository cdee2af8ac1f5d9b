"""The eval's score cache: keys follow the weights' contents and every setting, and what is
stored comes back equal (tensors included); a damaged file is refused by name."""

import shutil

import pytest
import torch

from jsd_loss.eval import ModelScoreCache, model_run_key
from tests.conftest import write_tiny_hf_dir

SETTINGS = {"examples": [{"instruction": "Hi", "context": "", "response": "Hello", "category": "open_qa"}],
            "dtype": "torch.float32", "device": "cpu", "generation": {"batch_size": 2, "max_new_tokens": 6}}


@pytest.fixture
def model_dir(tmp_path):
    return write_tiny_hf_dir(tmp_path / "m", seed=3)


def _run():
    return {"outputs": ["a b", ""], "generation_tokens_per_second": 12.5,
            "tf": {"argmax": [torch.tensor([3, 1, 4]), torch.tensor([], dtype=torch.long)],
                   "nll": [2.5, 0.0], "n_tokens": [3, 0]}}


def test_key_follows_weights_contents_not_the_directory(tmp_path, model_dir):
    key = model_run_key(model_dir, quantize=None, settings=SETTINGS)
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert model_run_key(copy, quantize=None, settings=SETTINGS) == key
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_run_key(copy, quantize=None, settings=SETTINGS) != key


def test_key_follows_every_setting_and_the_quantisation(model_dir):
    key = model_run_key(model_dir, quantize=None, settings=SETTINGS)
    assert model_run_key(model_dir, quantize="int8_weight_only", settings=SETTINGS) != key
    for change in ({"dtype": "torch.bfloat16"}, {"generation": {"batch_size": 2, "max_new_tokens": 7}},
                   {"examples": SETTINGS["examples"] * 2}):
        assert model_run_key(model_dir, quantize=None, settings={**SETTINGS, **change}) != key


def test_stored_runs_come_back_equal(tmp_path):
    cache = ModelScoreCache(tmp_path / "scores")
    assert cache.get("k" * 64) is None
    cache.put("k" * 64, _run())
    got = cache.get("k" * 64)
    want = _run()
    assert got["outputs"] == want["outputs"] and got["generation_tokens_per_second"] == 12.5
    assert got["tf"]["nll"] == want["tf"]["nll"] and got["tf"]["n_tokens"] == want["tf"]["n_tokens"]
    for a, b in zip(got["tf"]["argmax"], want["tf"]["argmax"]):
        assert a.dtype == torch.long and torch.equal(a, b)
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["k" * 64 + ".json"]  # no temporary files left


@pytest.mark.parametrize("text", ["{not json", '{"key": "other"}', '{"key": "KEY", "outputs": ["a"]}'])
def test_a_damaged_file_is_refused_by_name(tmp_path, text):
    cache = ModelScoreCache(tmp_path)
    key = "0" * 64
    (tmp_path / f"{key}.json").write_text(text.replace("KEY", key))
    with pytest.raises(ValueError, match=f"score cache file .*{key}.json"):
        cache.get(key)
