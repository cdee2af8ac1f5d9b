"""The real SmolLM2-135M-Instruct imported from the GGUF, against transformers' own GGUF loader."""

import json
import os

import pytest
import torch
from torchtune.data import Message
from transformers import AutoModelForCausalLM

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.models.smollm2 import smollm2_135m, smollm2_hf_to_tune, smollm2_tokenizer
from jsd_loss.prepare import prepare_teacher_from_gguf
from jsd_loss.prepare.__main__ import main as prepare_main

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Summarize: The Eiffel Tower, completed in 1889, is 330 metres tall.",
    "List three prime numbers greater than 100.",
]


@pytest.fixture(scope="module")
def tune_teacher(teacher_dir):
    model = smollm2_135m().eval()
    model.load_state_dict(smollm2_hf_to_tune(load_state_dict(teacher_dir)))
    return model


def test_logits_match_transformers_gguf_loader(teacher_dir, tune_teacher, gguf_reference):
    ref_model, _ = gguf_reference
    tok = smollm2_tokenizer(str(teacher_dir / "tokenizer.json"))
    hf_dir_model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    worst = 0.0
    for prompt in PROMPTS:
        ids = torch.tensor([tok.generation_prompt([Message(role="user", content=prompt)])])
        with torch.no_grad():
            ref = ref_model(ids).logits
            ours = tune_teacher(ids)
            ours_hf = hf_dir_model(ids).logits
        worst = max(worst, (ours - ref).abs().max().item())
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
        # our HF directory is the same model as transformers' direct GGUF import
        assert torch.equal(ours_hf, ref)
    print(f"max |logit diff| torchtune vs transformers-GGUF: {worst:.3g}")
    assert worst < 1e-3


def test_greedy_chatml_generation_names_paris(teacher_dir, tune_teacher):
    tok = smollm2_tokenizer(str(teacher_dir / "tokenizer.json"))
    ids = tok.generation_prompt([Message(role="user", content="What is the capital of France?")])
    for _ in range(12):
        with torch.no_grad():
            nxt = tune_teacher(torch.tensor([ids]))[0, -1].argmax().item()
        if nxt in tok.stop_tokens:
            break
        ids.append(nxt)
    answer = tok.decode(ids[-12:])
    assert "Paris" in answer, answer


def test_rerun_is_a_no_op(teacher_dir, gguf_path):
    before = {p.name: p.stat().st_mtime_ns for p in teacher_dir.iterdir()}
    prepare_teacher_from_gguf(teacher_dir, gguf_path)
    assert {p.name: p.stat().st_mtime_ns for p in teacher_dir.iterdir()} == before
    config = json.loads((teacher_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["tie_word_embeddings"]) == (30, 576, True)
    assert "lm_head.weight" not in load_state_dict(teacher_dir)


def test_bad_gguf_inputs_write_nothing(tmp_path, gguf_path, capsys):
    out = tmp_path / "out"
    assert prepare_main(["teacher", "--output-dir", str(out), "--gguf", str(tmp_path / "missing.gguf")]) == 2
    assert "GGUF file not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    for bad in (garbage, truncated):
        assert prepare_main(["teacher", "--output-dir", str(out), "--gguf", str(bad)]) == 2
        assert "not a valid GGUF file" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.gguf", "truncated.gguf"]


def test_existing_foreign_output_is_kept(tmp_path, gguf_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_teacher_from_gguf(out, gguf_path)
    assert (out / "notes.txt").read_text() == "mine"
