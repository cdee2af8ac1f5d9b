import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.models.smollm2 import smollm2_from_hf
from jsd_loss.prepare import default_layer_selection, prepare_student
from jsd_loss.prepare.__main__ import main as prepare_main
from jsd_loss.pruning import PruningPlan
from tests.conftest import write_tiny_hf_dir


def test_default_selection_keeps_ends_and_spreads_evenly():
    assert default_layer_selection(30, 17) == [0, 2, 4, 5, 7, 9, 11, 13, 14, 16, 18, 20, 22, 24, 25, 27, 29]
    assert default_layer_selection(30, 30) == list(range(30))
    assert default_layer_selection(4, 2) == [0, 3]


@pytest.mark.slow
def test_real_90m_student_copies_teacher_layers_and_loads_in_transformers(tmp_path, teacher_dir):
    out = prepare_student(teacher_dir, tmp_path / "student", PruningPlan(method="even", num_layers=17))
    layers = default_layer_selection(30, 17)
    teacher, student = load_state_dict(teacher_dir), load_state_dict(out)
    assert len(student) == 2 + 17 * 9
    for new, old in enumerate(layers):
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(student[f"model.layers.{new}.{name}"], teacher[f"model.layers.{old}.{name}"])
    assert torch.equal(student["model.embed_tokens.weight"], teacher["model.embed_tokens.weight"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 17
    assert (out / "tokenizer.json").read_bytes() == (teacher_dir / "tokenizer.json").read_bytes()

    ours = smollm2_from_hf(str(out))
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
        (["--num-layers", "3"], "num_layers must be in [1, 2], got 3"),
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
        prepare_student(teacher, tmp_path / "student", PruningPlan(method="even", num_layers=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def _student_argv(teacher, out, *extra):
    return ["student", "--teacher-dir", str(teacher), "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory, teacher_dir):
    # 4 layers, 4 heads over 2 KV heads, width 32, MLP 64, the real tokenizer
    return write_tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "teacher", tokenizer_from=teacher_dir, num_layers=4)


def test_width_student_records_kept_units_and_loads_in_transformers(tmp_path, tiny_teacher_dir):
    out = tmp_path / "student"
    argv = _student_argv(tiny_teacher_dir, out, "--method", "width", "--intermediate-size", "40", "--num-heads", "2",
                         "--hidden-size", "24", "--calibration-rows", "12", "--calibration-max-seq-len", "48")
    assert prepare_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"], config["hidden_size"], config["head_dim"]) == (
        40, 2, 24, 8)
    record = json.loads((out / "pruning.json").read_text())
    teacher, student = load_state_dict(tiny_teacher_dir), load_state_dict(out)
    channels = torch.tensor(record["hidden_channels"])
    for layer in range(4):
        neurons = torch.tensor(record["mlp_neurons"][layer])
        t = teacher[f"model.layers.{layer}.mlp.up_proj.weight"]
        assert torch.equal(student[f"model.layers.{layer}.mlp.up_proj.weight"], t[neurons][:, channels])
        assert len(record["attention_heads"][layer]) == 2
        assert [h // 2 for h in record["attention_heads"][layer]] == [0, 1]  # one head per KV group
    assert torch.equal(student["model.embed_tokens.weight"], teacher["model.embed_tokens.weight"][:, channels])

    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(smollm2_from_hf(str(out))(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)
    # same inputs: nothing to do; the manifest names the method
    assert prepare_main(argv) == 0
    assert json.loads((out / "jsd_distill_prepare.json").read_text())["plan"]["method"] == "width"


def test_depth_methods_and_the_default_run_on_a_tiny_teacher(tmp_path, tiny_teacher_dir):
    common = ("--calibration-rows", "8", "--calibration-max-seq-len", "32")
    assert prepare_main(_student_argv(tiny_teacher_dir, tmp_path / "bi", "--method", "depth-bi",
                                      "--num-layers", "2", *common)) == 0
    record = json.loads((tmp_path / "bi" / "pruning.json").read_text())
    assert len(record["teacher_layers"]) == 2
    size = json.loads((tmp_path / "bi" / "pruning.json").read_text())["teacher_parameters"] - 4 * 3 * 32 * 10
    assert prepare_main(_student_argv(tiny_teacher_dir, tmp_path / "default", "--target-params", str(int(size)),
                                      *common)) == 0
    assert json.loads((tmp_path / "default" / "pruning.json").read_text())["plan"]["method"] == "width"


def test_bad_pruning_inputs_fail_before_writing(tmp_path, tiny_teacher_dir, capsys):
    out = tmp_path / "student"
    cases = [
        (["--target-params", "1K"], "unreachable"),
        (["--method", "width", "--num-heads", "3"], "multiple of the 2 KV heads"),
        (["--calibration-rows", "0"], "at least 1"),
        (["--calibration-rows", "100000", "--intermediate-size", "40"], "has only"),
        (["--method", "depth-bi+width", "--intermediate-size", "8"], "needs --num-layers or --target-params"),
    ]
    for extra, message in cases:
        assert prepare_main(_student_argv(tiny_teacher_dir, out, *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit):
        prepare_main(_student_argv(tiny_teacher_dir, out, "--method", "magic"))
    assert "invalid choice: 'magic'" in capsys.readouterr().err

    small_vocab = write_tiny_hf_dir(tmp_path / "small-vocab", vocab_size=1000)
    assert prepare_main(_student_argv(small_vocab, out, "--tokenizer", str(tiny_teacher_dir / "tokenizer.json"),
                                      "--intermediate-size", "40", "--calibration-rows", "4")) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]
