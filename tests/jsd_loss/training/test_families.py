import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from jsd_loss.models.smollm2 import smollm2, smollm2_tune_to_hf
from jsd_loss.training import LLAMA_LAYOUT, hf_converter
from tests.conftest import TINY

HF = {"num_attention_heads": TINY["num_heads"], "num_key_value_heads": TINY["num_kv_heads"], "tie_word_embeddings": True}


def _ckpt(model_type):
    return OmegaConf.create({"checkpoint_dir": "x", "model_type": model_type})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return smollm2(**TINY)


def test_llama_layout_families_save_with_the_inverse_of_their_load(model):
    sd = model.state_dict()
    expected = smollm2_tune_to_hf(sd, TINY["num_heads"], TINY["num_kv_heads"])
    for model_type in LLAMA_LAYOUT:
        got = hf_converter(_ckpt(model_type), HF, model)(dict(sd))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    # torchtune's own reader for these types gives the weights back
    from torchtune.models.convert_weights import hf_to_tune

    back = hf_to_tune(expected, num_heads=TINY["num_heads"], num_kv_heads=TINY["num_kv_heads"], dim=TINY["embed_dim"])
    assert all(torch.equal(back[k], sd[k]) for k in back) and "output.weight" not in back


def test_other_families_are_refused(model):
    for model_type in ("QWEN2", "PHI3_MINI", "GEMMA2", None):
        with pytest.raises(ValueError, match=f"cannot save a checkpointer.model_type={model_type} student"):
            hf_converter(_ckpt(model_type), HF, model)


def test_untied_students_are_refused(model):
    with pytest.raises(ValueError, match="cannot save an untied student .config.json tie_word_embeddings=False"):
        hf_converter(_ckpt("LLAMA3_2"), {**HF, "tie_word_embeddings": False}, model)
    untied = smollm2(**TINY)
    untied.output = nn.Linear(TINY["embed_dim"], TINY["vocab_size"], bias=False)
    with pytest.raises(ValueError, match="model output Linear"):
        hf_converter(_ckpt("LLAMA3_2"), HF, untied)


def test_an_explicit_converter_replaces_the_choice(model):
    to_hf = hf_converter(_ckpt("QWEN2"), {**HF, "tie_word_embeddings": False}, model,
                         converter="tests.jsd_loss.training.test_families.named_converter")
    assert to_hf({"w": torch.zeros(1)}) == {"heads": TINY["num_heads"], "kv_heads": TINY["num_kv_heads"]}
    for bad in ("no.such.module.fn", "jsd_loss.models.smollm2.no_such_fn", "jsd_loss.training.LLAMA_LAYOUT"):
        with pytest.raises(ValueError, match=f"hf_converter='{bad}'"):
            hf_converter(_ckpt("LLAMA3_2"), HF, model, converter=bad)


def named_converter(state_dict, num_heads, num_kv_heads):
    return {"heads": num_heads, "kv_heads": num_kv_heads}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_llama3_2_student_saved_by_model_type_gives_transformers_the_torchtune_logits(tmp_path, lora):
    """A tied Llama 3.2-shaped student (rope scaling factor 32) with random weights, saved as the
    recipe saves it through checkpointer.model_type LLAMA3_2 (LoRA adapters merged), loads in
    transformers with the torchtune model's logits."""
    from transformers import LlamaForCausalLM

    from jsd_loss.checkpointing import write_model_dir
    from jsd_loss.training import LoRA, build_model, merged_hf_state_dict
    from tests.llama3_tiny import LLAMA3_VOCAB, LORA_STUDENT_MODEL, STUDENT, STUDENT_MODEL, hub_config

    torch.manual_seed(0)
    model = build_model(OmegaConf.create(LORA_STUDENT_MODEL if lora else STUDENT_MODEL), torch.device("cpu"),
                        torch.float32).eval()
    adapters = None
    if lora:  # adapters that change the model (lora_b starts at zero)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_b" in name:
                    p.normal_(std=0.5)
        adapters = LoRA({}, rank=LORA_STUDENT_MODEL["lora_rank"], alpha=LORA_STUDENT_MODEL["lora_alpha"])
    config = hub_config(STUDENT, tied=True)
    to_hf = hf_converter(_ckpt("LLAMA3_2"), config, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_model_dir(tmp_path, merged_hf_state_dict(state, adapters, to_hf), config)
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    tokens = torch.randint(0, LLAMA3_VOCAB, (1, 400), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max(), (ours - theirs).abs().max()
