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
