"""Input checks that run before any model is built."""

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.checkpointing import ChecksumError, atomic_directory, write_model_dir
from jsd_loss.training import check_checkpoints


def test_a_corrupted_teacher_or_student_is_refused_naming_the_file(tmp_path):
    """torchtune's checkpointer would load a flipped bit silently; the checksums do not."""
    dirs = {}
    for who in ("student", "teacher"):
        with atomic_directory(tmp_path / who) as tmp:
            write_model_dir(tmp, {"w": torch.ones(64)}, {"vocab_size": 16})
        dirs[who] = OmegaConf.create({"checkpoint_dir": str(tmp_path / who), "checkpoint_files": ["model.safetensors"]})
    assert check_checkpoints(dirs["student"], dirs["teacher"]) == ({"vocab_size": 16}, {"vocab_size": 16})
    for who in ("teacher", "student"):
        weights = tmp_path / who / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x04  # in the tensor data: still a valid safetensors file
        weights.write_bytes(bytes(data))
        with pytest.raises(ChecksumError, match=rf"{weights} is corrupted"):
            check_checkpoints(dirs["student"], dirs["teacher"])
        data[-3] ^= 0x04
        weights.write_bytes(bytes(data))
