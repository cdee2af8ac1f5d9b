import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.models.smollm2 import smollm2_90m, smollm2_hf_to_tune
from jsd_loss.prepare import default_layer_selection, prepare_student
from jsd_loss.prepare.__main__ import main as prepare_main
from tests.conftest import write_tiny_hf_dir


def test_default_selection_keeps_ends_and_spreads_evenly():
    assert default_layer_selection(30, 17) == [0, 2, 4, 5, 7, 9, 11, 13, 14, 16, 18, 20, 22, 24, 25, 27, 29]
    assert default_layer_selection(30, 30) == list(range(30))
    assert default_layer_selection(4, 2) == [0, 3]


@pytest.mark.slow
def test_real_90m_student_copies_teacher_layers_and_loads_in_transformers(tmp_path, teacher_dir):
    out = prepare_student(teacher_dir, tmp_path / "student", num_layers=17)
    layers = default_layer_selection(30, 17)
    teacher, student = load_state_dict(teacher_dir), load_state_dict(out)
    assert len(student) == 2 + 17 * 9
    for new, old in enumerate(layers):
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(student[f"model.layers.{new}.{name}"], teacher[f"model.layers.{old}.{name}"])
    assert torch.equal(student["model.embed_tokens.weight"], teacher["model.embed_tokens.weight"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 17
    assert (out / "tokenizer.json").read_bytes() == (teacher_dir / "tokenizer.json").read_bytes()

    ours = smollm2_90m().eval()
    ours.load_state_dict(smollm2_hf_to_tune(student))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(tokens), hf(tokens).logits
    # two float32 implementations (torchtune SDPA vs HF attention) of a pruned model whose logits
    # reach tens: differences of ~1e-3 are rounding, so compare relative to the logit scale
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    print(f"max |diff| {(a - b).abs().max():.3g}, max |logit| {a.abs().max():.3g}")
    assert (a - b).abs().max() < 1e-4 * a.abs().max()


def test_bad_student_inputs_fail_before_writing(tmp_path, capsys):
    teacher = write_tiny_hf_dir(tmp_path / "teacher")
    out = tmp_path / "student"
    cases = [
        (["--num-layers", "1", "--layers", "0,5"], "out of range"),
        (["--layers", "1,0"], "increasing"),
        (["--layers", "0,0"], "repeats"),
        (["--num-layers", "3"], "--num-layers must be in"),
        (["--num-layers", "1", "--layers", "0,1"], "disagrees"),
    ]
    for extra, message in cases:
        argv = ["student", "--teacher-dir", str(teacher), "--output-dir", str(out)] + extra
        assert prepare_main(argv) == 2
        assert message in capsys.readouterr().err
    assert prepare_main(["student", "--teacher-dir", str(tmp_path / "nope"), "--output-dir", str(out),
                         "--num-layers", "1"]) == 2
    assert "model directory not found" in capsys.readouterr().err

    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    assert prepare_main(["student", "--teacher-dir", str(teacher), "--output-dir", str(out),
                         "--num-layers", "1"]) == 2
    assert "config.json implies" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import jsd_loss.prepare._student as student_mod

    teacher = write_tiny_hf_dir(tmp_path / "teacher")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(student_mod, "write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_student(teacher, tmp_path / "student", num_layers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
