import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.models.smollm2 import smollm2
from jsd_loss.training import build_model, init_adapters, setup_student, setup_teacher
from tests.conftest import TINY, TINY_MODEL

LORA = OmegaConf.create({"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj"],
                         "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, **TINY})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return smollm2(**TINY).state_dict()


def _meta_then_load(model, state_dict, strict):
    """A load that materialises what is still on meta (adapters are not), as FSDP2's does."""
    for m in model.modules():
        for name, t in list(m.named_parameters(recurse=False)):
            if t.is_meta:
                setattr(m, name, torch.nn.Parameter(torch.empty_like(t, device=CPU), requires_grad=t.requires_grad))
    for m in model.modules():
        if hasattr(m, "rope_init"):
            m.rope_init()
    return model.load_state_dict(state_dict, strict=strict)


def test_full_parameter_student_trains_everything(weights):
    model, lora = setup_student(OmegaConf.create(TINY_MODEL), weights, device=CPU, dtype=torch.float32, seed=0,
                                activation_checkpointing=False)
    assert lora is None and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_lora_adapters_come_from_the_seed_alone_however_the_base_is_built(weights):
    torch.manual_seed(123)  # the caller's stream must not matter
    a, lora = setup_student(LORA, weights, device=CPU, dtype=torch.float32, seed=7, activation_checkpointing=False)
    torch.manual_seed(999)
    b, _ = setup_student(LORA, weights, device=CPU, dtype=torch.float32, seed=7, activation_checkpointing=True,
                         on_meta=True, load=_meta_then_load)
    assert (lora.rank, lora.alpha) == (4, 8) and lora.params
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable == set(lora.params)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    for name in lora.params:
        assert torch.equal(sd_a[name], sd_b[name]), name
    c, _ = setup_student(LORA, weights, device=CPU, dtype=torch.float32, seed=8, activation_checkpointing=False)
    assert not torch.equal(sd_a["layers.0.attn.q_proj.lora_a.weight"], c.state_dict()["layers.0.attn.q_proj.lora_a.weight"])


def test_a_checkpoint_that_does_not_fit_is_refused(weights):
    partial = {k: v for k, v in weights.items() if "layers.1." not in k}
    with pytest.raises(ValueError, match="student checkpoint does not fit the model config: missing"):
        setup_student(OmegaConf.create(TINY_MODEL), partial, device=CPU, dtype=torch.float32, seed=0,
                      activation_checkpointing=False)
    with pytest.raises(RuntimeError, match="Missing key"):
        setup_teacher(OmegaConf.create(TINY_MODEL), partial, device=CPU, dtype=torch.float32)


def test_teacher_is_frozen_in_eval_mode(weights):
    model = setup_teacher(OmegaConf.create(TINY_MODEL), weights, device=CPU, dtype=torch.bfloat16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_build_on_meta_allocates_nothing():
    model = build_model(OmegaConf.create(TINY_MODEL), torch.device("meta"), torch.float32)
    assert all(p.is_meta for p in model.parameters())


def test_drawing_adapters_leaves_the_callers_random_stream_alone():
    model = build_model(LORA, CPU, torch.float32)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_adapters(model, seed=7, device=CPU, dtype=torch.float32)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("on_meta", [False, True])
def test_a_dora_student_starts_as_its_checkpoint(tmp_path, on_meta):
    """Step-0 logits of a DoRA student equal transformers' for the checkpoint it was loaded from."""
    from transformers import LlamaForCausalLM

    from jsd_loss.models.smollm2 import smollm2_from_hf
    from tests.conftest import write_tiny_hf_dir

    src = write_tiny_hf_dir(tmp_path / "src", seed=3)
    reference = LlamaForCausalLM.from_pretrained(str(src)).eval()
    dora = OmegaConf.merge(LORA, {"use_dora": True, "lora_attn_modules": ["q_proj", "v_proj", "output_proj"]})
    model, lora = setup_student(dora, smollm2_from_hf(str(src)).state_dict(), device=CPU, dtype=torch.float32,
                                seed=0, activation_checkpointing=False, on_meta=on_meta,
                                **({"load": _meta_then_load} if on_meta else {}))
    assert lora is not None and any(k.endswith("magnitude") for k in lora.params)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), reference(tokens).logits, rtol=1e-4, atol=1e-5)
