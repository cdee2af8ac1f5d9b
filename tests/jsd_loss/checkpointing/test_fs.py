import json
import os

import pytest
import torch

import jsd_loss.checkpointing._hf_dir as hf_dir
from jsd_loss.checkpointing import atomic_directory, load_state_dict, write_model_dir
from jsd_loss.checkpointing._fs import exchange


def test_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("b")
    assert exchange(tmp_path / "a", tmp_path / "b")  # ext4 and tmpfs can (Linux >= 3.15)
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "a", tmp_path / "missing")


def _complete(path):
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.parametrize("can_exchange", [True, False])
def test_replacing_a_directory_keeps_a_complete_one_on_disk_throughout(tmp_path, monkeypatch, can_exchange):
    """Every rename, fsync and removal is recorded with whether a complete checkpoint was on
    disk under the target's name (or, where the file system cannot swap, in the hidden copy
    moved aside) before and after it."""
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        write_model_dir(tmp, {"w": torch.ones(2)}, {"a": 1})
    events = []

    def on_disk():  # with a swap, always under the target's own name
        aside = [] if can_exchange else list(tmp_path.glob(".model.old-*/model"))
        return _complete(out) or any(_complete(p) for p in aside)

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            before = on_disk()
            result = fn(*args, **kwargs)
            events.append((name, str(args[0]), before, on_disk()))
            return result
        return wrapped

    real_exchange = hf_dir.exchange
    monkeypatch.setattr(hf_dir, "exchange", spy("exchange", real_exchange if can_exchange else lambda a, b: False))
    monkeypatch.setattr(hf_dir, "fsync_file", spy("fsync_file", hf_dir.fsync_file))
    monkeypatch.setattr(hf_dir, "fsync_dir", spy("fsync_dir", hf_dir.fsync_dir))
    monkeypatch.setattr(hf_dir.os, "replace", spy("replace", os.replace))
    monkeypatch.setattr(hf_dir.shutil, "rmtree", spy("rmtree", hf_dir.shutil.rmtree))
    with atomic_directory(out, overwrite=True) as tmp:
        write_model_dir(tmp, {"w": torch.zeros(2)}, {"a": 2})
    assert json.loads((out / "config.json").read_text()) == {"a": 2}
    assert torch.equal(load_state_dict(out)["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert all(before and after for _, _, before, after in events), events
    # (a swap that the file system refused renamed nothing)
    names = [(n, p) for n, p, _, _ in events if can_exchange or n != "exchange"]
    # files and the new directory's entries on disk before it is renamed into place; the
    # rename on disk (the parent fsynced) before the old one is removed
    first_rename = next(i for i, (n, _) in enumerate(names) if n in ("replace", "exchange"))
    assert {n for n, _ in names[:first_rename]} == {"fsync_file", "fsync_dir"}
    assert names[first_rename - 1] == ("fsync_dir", str(tmp))
    removal = next(i for i, (n, _) in enumerate(names) if n == "rmtree")
    assert ("fsync_dir", str(tmp_path)) in names[first_rename:removal]
    assert len([n for n, _ in names if n == "fsync_file"]) == 3  # config.json, model.safetensors, checksums.json


def test_a_kill_after_the_swap_leaves_the_new_directory(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        write_model_dir(tmp, {"w": torch.ones(2)}, {"a": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the old one not yet removed
    monkeypatch.setattr(hf_dir.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out, overwrite=True) as tmp:
            write_model_dir(tmp, {"w": torch.zeros(2)}, {"a": 2})
    assert json.loads((out / "config.json").read_text()) == {"a": 2}
    assert torch.equal(load_state_dict(out)["w"], torch.zeros(2))
