import os
import stat

import pytest

from jsd_loss.checkpointing import atomic_file


def test_atomic_file_appears_only_when_complete(tmp_path):
    out = tmp_path / "sub" / "model.gguf"
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not out.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no temporary file left behind

    with atomic_file(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".model.gguf.tmp-")
        tmp.write_bytes(b"one")
    assert out.read_bytes() == b"one"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_atomic_file_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_file(out):
            raise AssertionError("the block must not run")
    with pytest.raises(RuntimeError):
        with atomic_file(out, overwrite=True) as tmp:
            tmp.write_bytes(b"new, but broken")
            raise RuntimeError("interrupted")
    assert out.read_bytes() == b"old"
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    with pytest.raises(IsADirectoryError):
        with atomic_file(tmp_path, overwrite=True):
            pass
