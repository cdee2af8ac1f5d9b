"""Exact resume of LoRA/DoRA students: adapters saved beside merged weights, restored onto the
frozen base, a replaced base refused (the recipe end to end:
tests/recipes/test_reliability.py::test_a_killed_adapter_student_resumes_exactly)."""

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.models.smollm2 import smollm2, smollm2_hf_to_tune, smollm2_tune_to_hf
from jsd_loss.training import (
    ADAPTER_KEY,
    adapter_identity,
    adapter_state,
    build_model,
    merged_hf_state_dict,
    resume_weights,
    setup_student,
    write_checkpoint,
)
from tests.conftest import TINY

CPU = torch.device("cpu")


def adapter_cfg(use_dora):
    return OmegaConf.create({"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
                             "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, "use_dora": use_dora, **TINY})


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return smollm2(**TINY).state_dict()


def trained_student(cfg, base):
    """A student whose adapters (and DoRA magnitudes) moved away from their initial values."""
    model, lora = setup_student(cfg, base, device=CPU, dtype=torch.float32, seed=0, activation_checkpointing=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)
            if "magnitude" in name:
                p.mul_(1 + 0.1 * torch.rand_like(p))
    return model.eval(), lora


def to_hf(sd):
    return smollm2_tune_to_hf(sd, TINY["num_heads"], TINY["num_kv_heads"])


def load(d):
    return smollm2_hf_to_tune(load_state_dict(d), TINY["num_heads"], TINY["num_kv_heads"])


def test_saving_a_merged_checkpoint_leaves_the_live_model_alone(base):
    """On CPU the state dict's tensors are the model's own: torchtune's in-place merge would
    fold the adapters into the frozen base while it trains on."""
    model, lora = trained_student(adapter_cfg(False), base)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 9))
    before = model(tokens)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    assert state["layers.0.attn.q_proj.weight"].data_ptr() == model.layers[0].attn.q_proj.weight.data_ptr()
    merged_hf_state_dict(state, lora, to_hf)
    torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)
    assert torch.equal(model.state_dict()["layers.0.attn.q_proj.weight"], base["layers.0.attn.q_proj.weight"])


@pytest.mark.parametrize("use_dora", [False, True])
def test_a_student_resumed_from_base_and_saved_adapters_is_the_trained_one(tmp_path, base, use_dora):
    cfg = adapter_cfg(use_dora)
    model, lora = trained_student(cfg, base)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 9))
    expected = model(tokens)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    adapters = adapter_state(state, lora.params)
    assert any("magnitude" in k for k in adapters) == use_dora
    step = tmp_path / "step_1"
    write_checkpoint(step, merged_hf_state_dict(state, lora, to_hf), {"x": 1}, tmp_path, {ADAPTER_KEY: adapters})
    base_dir = tmp_path / "base"
    write_checkpoint(base_dir, to_hf(dict(base)), {"x": 1}, tmp_path)
    recipe_state = torch.load(step / "recipe_state.pt", weights_only=True)

    identity = adapter_identity(build_model(cfg, torch.device("meta"), torch.float32), 4, 8)
    weights, saved = resume_weights(recipe_state, identity, load, step, base_dir)
    resumed, _ = setup_student(cfg, weights, device=CPU, dtype=torch.float32, seed=1, activation_checkpointing=False,
                               adapters=saved)
    torch.testing.assert_close(resumed.eval()(tokens), expected, rtol=1e-5, atol=1e-6)
    for k, v in adapters.items():  # trained magnitudes kept, not recomputed from the weights
        assert torch.equal(resumed.state_dict()[k], v), k
    # without the saved adapters (the old behaviour: merged weights, adapters drawn afresh)
    # the forward agrees but the trainable parameters are not the trained ones
    drawn, _ = setup_student(cfg, load(step), device=CPU, dtype=torch.float32, seed=0, activation_checkpointing=False)
    assert not all(torch.equal(drawn.state_dict()[k], v) for k, v in adapters.items())


def test_resume_refuses_what_cannot_be_resumed_exactly(tmp_path, base):
    cfg = adapter_cfg(False)
    model, lora = trained_student(cfg, base)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    adapters = adapter_state(state, lora.params)
    step, base_dir = tmp_path / "step_1", tmp_path / "base"
    write_checkpoint(step, merged_hf_state_dict(state, lora, to_hf), {"x": 1}, tmp_path, {ADAPTER_KEY: adapters})
    identity = adapter_identity(build_model(cfg, torch.device("meta"), torch.float32), 4, 8)

    # a full-parameter student resumes from the step checkpoint's weights
    full, none = resume_weights({}, None, load, step, base_dir)
    assert none is None and torch.equal(full["layers.0.attn.q_proj.weight"], load(step)["layers.0.attn.q_proj.weight"])
    with pytest.raises(ValueError, match=rf"cannot resume the LoRA/DoRA student exactly from {step}: it holds the merged"):
        resume_weights({}, identity, load, step, base_dir)
    with pytest.raises(ValueError, match="do not fit the configured student's"):
        resume_weights({ADAPTER_KEY: adapters}, None, load, step, base_dir)
    other = adapter_identity(build_model(adapter_cfg(True), torch.device("meta"), torch.float32), 4, 8)
    with pytest.raises(ValueError, match="do not fit the configured student's"):
        resume_weights({ADAPTER_KEY: adapters}, other, load, step, base_dir)

    # the base replaced since the run started (one weight nudged)
    changed = dict(base, **{"layers.1.mlp.w2.weight": base["layers.1.mlp.w2.weight"] * 1.001})
    write_checkpoint(base_dir, to_hf(changed), {"x": 1}, tmp_path)
    with pytest.raises(ValueError, match=rf"from {step}: its frozen base, read from {base_dir}, .*layers.1.mlp.w2.weight"):
        resume_weights({ADAPTER_KEY: adapters}, identity, load, step, base_dir)
    write_checkpoint(base_dir, to_hf(dict(base)), {"x": 1}, tmp_path)
    weights, saved = resume_weights({ADAPTER_KEY: adapters}, identity, load, step, base_dir)
    assert saved is adapters and torch.equal(weights["layers.1.mlp.w2.weight"], base["layers.1.mlp.w2.weight"])
