"""checksums.json: written with each HF directory and step checkpoint, verified before loading."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from jsd_loss.checkpointing import (
    CHECKSUMS,
    ChecksumError,
    atomic_directory,
    load_state_dict,
    verify_directory,
    write_checksums,
    write_model_dir,
)
from tests.fuzz import check, fuzz

WEIGHTS = {"a": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(3)}


def flip(path, byte, bit=0):
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_a_written_directory_records_its_weights_and_loads_verified(tmp_path):
    with atomic_directory(tmp_path / "m") as tmp:
        write_model_dir(tmp, WEIGHTS, {"x": 1})
    weights = tmp_path / "m" / "model.safetensors"
    recorded = json.loads((tmp_path / "m" / CHECKSUMS).read_text())["files"]
    # an independent digest: hashlib over the bytes on disk
    assert recorded == {"model.safetensors": {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                              "size": weights.stat().st_size}}
    assert verify_directory(tmp_path / "m") is True
    assert torch.equal(load_state_dict(tmp_path / "m")["a"], WEIGHTS["a"])


def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_file(tmp_path):
    """The data region: safetensors itself cannot tell, the checksum can."""
    with atomic_directory(tmp_path / "m") as tmp:
        write_model_dir(tmp, WEIGHTS, {"x": 1})
    weights = tmp_path / "m" / "model.safetensors"
    flip(weights, weights.stat().st_size - 5, bit=3)
    (tmp_path / "m" / CHECKSUMS).rename(tmp_path / "aside")
    assert not torch.equal(load_state_dict(tmp_path / "m")["b"], WEIGHTS["b"])  # silently wrong without it
    (tmp_path / "aside").rename(tmp_path / "m" / CHECKSUMS)
    with pytest.raises(ChecksumError, match=rf"{weights} is corrupted: its sha256 .* differs from .* recorded in"):
        load_state_dict(tmp_path / "m")


def test_truncation_a_missing_file_and_a_corrupt_checksums_file_are_refused(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file(WEIGHTS, str(d / "model.safetensors"))
    (d / "extra.bin").write_bytes(b"0123456789")
    write_checksums(d, ["model.safetensors"])
    write_checksums(d, ["extra.bin"])  # added to the entries already there
    assert sorted(json.loads((d / CHECKSUMS).read_text())["files"]) == ["extra.bin", "model.safetensors"]
    (d / "extra.bin").write_bytes(b"01234")
    with pytest.raises(ChecksumError, match=rf"{d / 'extra.bin'} is corrupted: 5 bytes where .* records 10"):
        verify_directory(d)
    (d / "extra.bin").unlink()
    with pytest.raises(ChecksumError, match=rf"{d / 'extra.bin'} is missing, but {d / CHECKSUMS} lists it"):
        verify_directory(d)
    (d / CHECKSUMS).write_text('{"files": {"model.safetensors": {"sha256": 1')
    with pytest.raises(ChecksumError, match=rf"{d / CHECKSUMS} is corrupted"):
        load_state_dict(d)


def test_a_directory_without_checksums_still_loads(tmp_path):
    d = tmp_path / "user_dir"
    d.mkdir()
    save_file(WEIGHTS, str(d / "model.safetensors"))
    assert verify_directory(d) is False
    assert torch.equal(load_state_dict(d)["a"], WEIGHTS["a"])


def test_fuzzed_safetensors_are_refused_naming_the_file_or_caught_by_the_checksum(tmp_path):
    """Cuts and bit flips (seeded): without the checksum a cut or a broken header is refused by
    the reader, a flip in tensor data loads silently different; with it, every one is refused."""
    torch.manual_seed(0)
    with atomic_directory(tmp_path / "m") as tmp:
        write_model_dir(tmp, {"w": torch.randn(16, 8), "b": torch.randn(8)}, {"x": 1})
    counts = check(fuzz("safetensors", tmp_path / "m", "model.safetensors", seed=0, flips=40), cuts_always_refused=True)
    assert counts["different"] > 0 and counts["error"] > 0, counts  # both regions were hit
