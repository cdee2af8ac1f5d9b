import json

import torch
from transformers import LlamaForCausalLM

from jsd_loss.models.smollm2 import (
    interleaved_to_rotate_half,
    rotate_half_to_interleaved,
    smollm2,
    smollm2_hf_to_tune,
    smollm2_tune_to_hf,
)
from tests.conftest import TINY, write_tiny_hf_dir


def test_rotary_permutation_matches_hand_computed_layout():
    # one head of dim 4: HF rotate-half rows (x0, x1 | y0, y1) -> interleaved (x0, y0, x1, y1)
    w = torch.arange(4.0).repeat_interleave(2).view(4, 2)
    out = rotate_half_to_interleaved(w, n_heads=1)
    assert out[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    assert torch.equal(interleaved_to_rotate_half(out, 1), w)


def test_hf_tune_hf_round_trip_is_bit_exact(tmp_path):
    hf = LlamaForCausalLM.from_pretrained(str(write_tiny_hf_dir(tmp_path / "m"))).state_dict()
    hf.pop("lm_head.weight", None)
    back = smollm2_tune_to_hf(smollm2_hf_to_tune(hf, 4, 2), 4, 2)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_torchtune_hf_checkpointer_with_llama3_2_type_reads_and_writes_smollm2(tmp_path):
    """The YAML checkpointer (FullModelHFCheckpointer, model_type LLAMA3_2) agrees with our
    converter, and what it saves loads in transformers with identical logits."""
    from torchtune.training import FullModelHFCheckpointer

    src = write_tiny_hf_dir(tmp_path / "src", seed=3)
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(src), checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2", output_dir=str(tmp_path / "out"),
    )
    sd = ckpt.load_checkpoint()["model"]
    hf_sd = LlamaForCausalLM.from_pretrained(str(src)).state_dict()
    ours = smollm2_hf_to_tune({k: v for k, v in hf_sd.items() if k != "lm_head.weight"}, 4, 2)
    assert sd.keys() == ours.keys() and all(torch.equal(sd[k], ours[k]) for k in sd)

    model = smollm2(**TINY).eval()
    model.load_state_dict(sd)
    ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    saved = tmp_path / "out" / "epoch_0"
    assert json.loads((saved / "config.json").read_text())["tie_word_embeddings"] is True
    reloaded = LlamaForCausalLM.from_pretrained(str(saved)).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (1, 19))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reloaded(tokens).logits, rtol=1e-4, atol=1e-4)
