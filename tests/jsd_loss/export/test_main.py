"""``python -m jsd_loss.export gguf``: clear errors, exit code 2, and nothing written on bad input."""

import json
import re
import subprocess
import sys

import gguf
import pytest

from jsd_loss.export import export_gguf
from jsd_loss.export.__main__ import main
from tests.conftest import REPO
from tests.jsd_loss.export.tiny_llama import write_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, teacher_dir):
    return write_tiny_llama(tmp_path_factory.mktemp("cli") / "tiny", teacher_dir, num_layers=1)


def _edited_copy(src, dst, **config_changes):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **config_changes}))
    return dst


def test_cli_writes_the_file_and_refuses_to_overwrite_it(tiny_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "tiny.gguf"
    cmd = [sys.executable, "-m", "jsd_loss.export", "gguf", "--model-dir", str(tiny_dir), "--output", str(out),
           "--type", "q8_0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "'Q8_0': 8, 'F32': 3" in proc.stderr and ".tmp-" not in proc.stderr
    assert gguf.GGUFReader(str(out)).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    before = out.read_bytes()

    assert main(["gguf", "--model-dir", str(tiny_dir), "--output", str(out), "--type", "f32"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["gguf", "--model-dir", str(tiny_dir), "--output", str(out), "--type", "f32", "--overwrite"]) == 0
    assert gguf.GGUFReader(str(out)).fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert [p.name for p in out.parent.iterdir()] == ["tiny.gguf"]


def test_bad_inputs_fail_clearly_and_write_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out" / "model.gguf"
    cases = {
        "model directory not found": tmp_path / "missing",
        "partial_rotary_factor 0.5 cannot be exported": _edited_copy(
            tiny_dir, tmp_path / "partial", rope_parameters={"rope_theta": 1e5, "partial_rotary_factor": 0.5}),
        "head_dim 5 is odd": _edited_copy(tiny_dir, tmp_path / "odd", head_dim=5),
        "only Llama-architecture": _edited_copy(tiny_dir, tmp_path / "qwen", model_type="qwen2",
                                                architectures=["Qwen2ForCausalLM"]),
        "q_proj.weight has shape \\(32, 32\\) but config.json implies \\(64, 32\\)": _edited_copy(
            tiny_dir, tmp_path / "wide", head_dim=16),
        "tie_word_embeddings is false but there is no lm_head.weight": _edited_copy(
            tiny_dir, tmp_path / "untied", tie_word_embeddings=False),
    }
    for message, model_dir in cases.items():
        assert main(["gguf", "--model-dir", str(model_dir), "--output", str(out)]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err), err
    with pytest.raises(SystemExit) as e:
        main(["gguf", "--model-dir", str(tiny_dir), "--output", str(out), "--type", "q4_0"])
    assert e.value.code == 2 and "invalid choice: 'q4_0'" in capsys.readouterr().err
    assert not out.parent.exists()


def test_a_failure_while_writing_leaves_no_file(tiny_dir, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        self.fout[0].write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_dir, tmp_path / "model.gguf", "f16")
    assert list(tmp_path.iterdir()) == []
