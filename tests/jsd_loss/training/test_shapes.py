import json

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.models.smollm2 import smollm2
from jsd_loss.training import build_model, check_model_shape, hf_config_shape, model_shape
from tests.conftest import TINY, TINY_MODEL, tiny_hf_config

META = torch.device("meta")
SHAPE = {"num_layers": 2, "embed_dim": 32, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "intermediate_dim": 64, "vocab": 49152}


def _meta(**overrides):
    return build_model(OmegaConf.create({**TINY_MODEL, **overrides}), META, torch.float32)


def test_the_shape_of_a_model_and_of_its_hf_config():
    assert model_shape(_meta()) == SHAPE
    hf = json.loads(tiny_hf_config().to_json_string())
    assert hf_config_shape(hf) == SHAPE
    del hf["head_dim"]
    assert hf_config_shape(hf)["head_dim"] == 8  # hidden_size / num_attention_heads
    assert hf_config_shape({**hf, "head_dim": 16})["head_dim"] == 16
    with pytest.raises(ValueError, match="x/config.json lacks 'intermediate_size'"):
        hf_config_shape({k: v for k, v in hf.items() if k != "intermediate_size"}, "x/config.json")


def test_lora_and_per_layer_shapes():
    lora = {"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj"],
            "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, **TINY}
    assert model_shape(build_model(OmegaConf.create(lora), META, torch.float32)) == SHAPE
    model = _meta()
    model.layers[1] = _meta(intermediate_dim=48).layers[1]  # a layer pruned on its own
    assert model_shape(model)["intermediate_dim"] == [64, 48]


@pytest.mark.parametrize("overrides, diff", [
    ({"intermediate_dim": 48}, "intermediate_dim 48 vs 64"),
    ({"num_layers": 3}, "num_layers 3 vs 2"),
    ({"num_heads": 2, "num_kv_heads": 1}, "num_heads 2 vs 4; num_kv_heads 1 vs 2; head_dim 16 vs 8"),
    ({"embed_dim": 64}, "embed_dim 64 vs 32; head_dim 16 vs 8"),
    ({"vocab_size": 100}, "vocab 100 vs 49152"),
])
def test_a_model_of_another_shape_is_refused_naming_both_shapes(overrides, diff):
    hf = json.loads(tiny_hf_config().to_json_string())
    check_model_shape(_meta(), hf, "student", "ckpt")
    with pytest.raises(ValueError) as e:
        check_model_shape(_meta(**overrides), hf, "teacher", "ckpt")
    message = str(e.value)
    assert message.startswith(f"the teacher model config does not build the model of its checkpoint ({diff})")
    built = model_shape(_meta(**overrides))
    assert ", ".join(f"{k}={built[k]}" for k in built) in message
    assert "ckpt/config.json describes " + ", ".join(f"{k}={v}" for k, v in SHAPE.items()) in message


def test_a_module_without_a_decoder_shape():
    with pytest.raises(ValueError, match="cannot read the shape of a Linear"):
        model_shape(torch.nn.Linear(2, 2))
    assert model_shape(smollm2(**TINY))["num_layers"] == 2


# ---------------------------------------------------------------- rotary embeddings, output tying

from jsd_loss.training import hf_config_rope, model_rope  # noqa: E402
from tests.llama3_tiny import STUDENT, STUDENT_MODEL, TEACHER, TEACHER_MODEL, hub_config  # noqa: E402

LLAMA3_2_ROPE = {"rope_theta": 500000.0, "rope_scaling": {
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192.0}}


def _llama(cfg, **overrides):
    return build_model(OmegaConf.create({**cfg, **overrides}), META, torch.float32)


def test_llama3_rope_scaling_as_the_model_builds_it_and_as_config_json_states_it():
    from transformers import LlamaConfig

    assert model_rope(_llama(STUDENT_MODEL)) == LLAMA3_2_ROPE
    hub = hub_config(STUDENT, tied=True)  # the hub's layout: rope_theta, rope_scaling
    assert hf_config_rope(hub) == LLAMA3_2_ROPE
    v5 = json.loads(LlamaConfig.from_dict(hub).to_json_string())  # transformers 5's: rope_parameters
    assert "rope_scaling" not in v5 and hf_config_rope(v5) == LLAMA3_2_ROPE
    teacher = model_rope(_llama(TEACHER_MODEL))
    assert teacher["rope_scaling"]["factor"] == 8.0 and hf_config_rope(hub_config(TEACHER, tied=False)) == teacher
    # SmolLM2: plain RoPE, in either layout
    assert model_rope(_meta()) == {"rope_theta": 100000.0, "rope_scaling": None}
    assert hf_config_rope(json.loads(tiny_hf_config().to_json_string())) == model_rope(_meta())
    assert hf_config_rope({"rope_theta": 1e5, "rope_scaling": None}) == model_rope(_meta())
    assert hf_config_rope({}) == {}  # nothing stated: nothing compared
    check_model_shape(_llama(STUDENT_MODEL), hub, "student", "ckpt")
    check_model_shape(_llama(TEACHER_MODEL), hub_config(TEACHER, tied=False), "teacher", "ckpt")
    with pytest.raises(ValueError, match=r"ckpt/config.json: llama3 rope scaling lacks \['factor'\]"):
        hf_config_rope({"rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1, "high_freq_factor": 4,
                                         "original_max_position_embeddings": 8192}}, "ckpt/config.json")


@pytest.mark.parametrize("model, hf, message", [
    ({**STUDENT_MODEL, "scale_factor": 8}, hub_config(STUDENT, tied=True),
     "the student model config does not build the rotary embeddings of its checkpoint: the config builds "
     "{'rope_theta': 500000.0, 'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, "),
    ({**STUDENT_MODEL, "scale_factor": 8}, hub_config(STUDENT, tied=True),
     "ckpt/config.json states rope_scaling={'rope_type': 'llama3', 'factor': 32.0, "),
    ({**STUDENT_MODEL, "rope_base": 10_000}, hub_config(STUDENT, tied=True), "ckpt/config.json states rope_theta=500000.0 ("),
    (TINY_MODEL, {**json.loads(tiny_hf_config().to_json_string()), "rope_scaling": hub_config(STUDENT, True)["rope_scaling"]},
     "ckpt/config.json states rope_scaling={'rope_type': 'llama3'"),
    (TINY_MODEL, {**json.loads(tiny_hf_config().to_json_string()), "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "ckpt/config.json states rope_scaling={'rope_type': 'yarn', 'factor': 4.0}"),
    ({**STUDENT_MODEL, "tie_word_embeddings": False}, hub_config(STUDENT, tied=True),
     "the student model config builds an output projection untied from the token embeddings (Linear); "
     "ckpt/config.json has tie_word_embeddings=True"),
    # llama3_1 always builds an untied output; llama3_2 ties it by default
    ({**TEACHER_MODEL, **{k: STUDENT[k] for k in ("embed_dim", "intermediate_dim", "scale_factor")}},
     hub_config(STUDENT, tied=True), "output projection untied from the token embeddings (Linear)"),
    ({**STUDENT_MODEL, **{k: TEACHER[k] for k in ("embed_dim", "intermediate_dim", "scale_factor")}},
     hub_config(TEACHER, tied=False),
     "output projection tied to the token embeddings (TiedLinear); ckpt/config.json has tie_word_embeddings=False"),
])
def test_a_llama3_model_config_with_other_rope_or_output_tying_is_refused(model, hf, message):
    with pytest.raises(ValueError) as e:
        check_model_shape(_llama(model), hf, "student", "ckpt")
    assert message in str(e.value)
