"""Llama 3.1 8B -> Llama 3.2 1B (configs/llama3_2) end to end on tiny random Llama-3-shaped HF
checkpoints (tests/llama3_tiny.py): the shipped configs with only the model widths, paths and run
length changed train with our recipe and JSD, and save a student that transformers loads with the
logits of the torchtune model."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import DOLLY, REPO, metrics, tune_run
from tests.llama3_tiny import (
    LLAMA3_VOCAB, LORA_STUDENT_MODEL, STUDENT, STUDENT_MODEL, TEACHER, TEACHER_MODEL, hf_model, torchtune_model,
    weight_files, write_llama3_dir,
)

FULL = REPO / "configs" / "llama3_2" / "8B_to_1B_jsd_single_device.yaml"
LORA = REPO / "configs" / "llama3_2" / "8B_to_1B_jsd_lora_single_device.yaml"


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3")
    # wide inits: a peaked teacher to distil, and student logits large enough that a wrong rope
    # scaling shows (factor 8 instead of 32 moves them by ~0.35 here, 40000x the float32 noise)
    teacher = write_llama3_dir(root / "teacher", TEACHER, tied=False, seed=1, corpus=DOLLY,
                               initializer_range=0.5, max_shard_size="20MB")
    student = write_llama3_dir(root / "student", STUDENT, tied=True, seed=2, corpus=DOLLY, initializer_range=0.2)
    assert len(weight_files(teacher)) > 1  # sharded, as the 8B
    return teacher, student


def llama_config(tmp_path: Path, teacher: Path, student: Path, path: Path = FULL, model: dict = STUDENT_MODEL,
                 **overrides) -> Path:
    """The shipped config with tiny models of the same builders, the tiny dirs, CPU and a short run."""
    cfg = OmegaConf.load(path)
    cfg.output_dir = str(tmp_path / "out")
    cfg.teacher_dir, cfg.student_dir = str(teacher), str(student)
    cfg.model, cfg.teacher_model = dict(model), dict(TEACHER_MODEL)
    cfg.teacher_checkpointer.checkpoint_files = weight_files(teacher)
    cfg.tokenizer.max_seq_len = 128
    cfg.dataset.source, cfg.dataset.max_rows = str(DOLLY), 8
    # fp32 throughout: bf16 autocast over the 128,256-wide logits is several times slower on this
    # CPU, and the shipped precision settings are the recipe's, tested with the SmolLM2 models
    cfg.device, cfg.dtype, cfg.mixed_precision, cfg.teacher_dtype = "cpu", "fp32", None, None
    cfg.batch_size, cfg.gradient_accumulation_steps, cfg.max_steps_per_epoch = 2, 1, 3
    cfg.save_every_n_steps, cfg.lr_scheduler.num_warmup_steps = 2, 0
    cfg.optimizer.lr = 1e-3
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    out = tmp_path / "config.yaml"
    OmegaConf.save(cfg, out)
    return out


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    """float32 logits equal up to 1e-4 of their scale (they differ by ~1e-6 of it)."""
    diff, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert diff <= 1e-4 * scale, (diff, scale)


def _tokens(n=400, seed=0):
    # positions far enough that the low rope frequencies, which Llama 3 scaling changes, turn
    return torch.randint(0, LLAMA3_VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def test_llama_fixtures_are_what_torchtunes_llama3_builders_and_checkpointers_build(llama_dirs, tmp_path):
    """torchtune's llama3_1 (untied, rope factor 8) and llama3_2 (tied, factor 32), read by its
    FullModelHFCheckpointer as LLAMA3 and LLAMA3_2, give transformers' logits on the tiny dirs."""
    teacher, student = llama_dirs
    tokens = _tokens()
    for cfg, d, model_type in ((TEACHER_MODEL, teacher, "LLAMA3"), (STUDENT_MODEL, student, "LLAMA3_2")):
        with torch.no_grad():
            assert_same_logits(torchtune_model(cfg, d, model_type, tmp_path)(tokens), hf_model(d)(tokens).logits)
    # and the comparison sees rope scaling: the student's weights under factor 8 give other logits
    hf = hf_model(student)
    other = json.loads((student / "config.json").read_text())
    other["rope_scaling"]["factor"] = 8.0
    from transformers import LlamaConfig, LlamaForCausalLM

    wrong = LlamaForCausalLM(LlamaConfig.from_dict(other)).eval()
    wrong.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert (wrong(tokens).logits - hf(tokens).logits).abs().max() > 100 * 1e-4 * hf(tokens).logits.abs().max()


def test_llama_8b_to_1b_config_trains_and_saves_a_student_transformers_loads(llama_dirs, tmp_path):
    teacher, student = llama_dirs
    tune_run(llama_config(tmp_path, teacher, student))
    out = tmp_path / "out"
    m = metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3]
    assert all(r["kd_loss"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in m)
    assert sorted(p.name for p in out.iterdir()) == ["final", "logs", "step_2"]
    final = out / "final"
    # saved as the hub's 1B is: its config.json (rope scaling, tied), no lm_head
    assert json.loads((final / "config.json").read_text()) == json.loads((student / "config.json").read_text())
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(str(final / "model.safetensors"))
    tokens = _tokens()
    with torch.no_grad():
        saved = hf_model(final)(tokens).logits
        # transformers' model of the saved dir = torchtune's llama3_2 reading it as LLAMA3_2
        assert_same_logits(torchtune_model(STUDENT_MODEL, final, "LLAMA3_2", tmp_path)(tokens), saved)
        assert (saved - hf_model(student)(tokens).logits).abs().max() > 1e-2  # trained


def test_llama_lora_student_config_trains_and_saves_merged_weights(llama_dirs, tmp_path):
    teacher, student = llama_dirs
    tune_run(llama_config(tmp_path, teacher, student, path=LORA, model=LORA_STUDENT_MODEL,
                          max_steps_per_epoch=2, save_every_n_steps=None))
    final = tmp_path / "out" / "final"
    from safetensors.torch import load_file

    saved, start = load_file(str(final / "model.safetensors")), load_file(str(student / "model.safetensors"))
    assert saved.keys() == start.keys()  # merged: no adapter tensors
    changed = {k for k in saved if not torch.equal(saved[k], start[k])}
    # the LoRA targets (q, v, output projection, MLP) moved; k, norms and embeddings did not
    assert changed == {f"model.layers.{i}.{name}.weight" for i in range(STUDENT["num_layers"]) for name in (
        "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    tokens = _tokens()
    with torch.no_grad():
        assert_same_logits(torchtune_model(STUDENT_MODEL, final, "LLAMA3_2", tmp_path)(tokens),
                           hf_model(final)(tokens).logits)
