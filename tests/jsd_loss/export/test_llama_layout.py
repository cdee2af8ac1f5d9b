"""config.json -> GGUF llama shape, and the HF -> GGUF tensor names and rotary layout."""

import pytest
import torch

from jsd_loss.export import gguf_tensors, llama_shape
from jsd_loss.models.smollm2 import interleaved_to_rotate_half

# transformers 5's config.json for a width-pruned student: head_dim is not hidden // heads
PRUNED = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100, "hidden_size": 48,
    "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
    "head_dim": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}


def test_shape_is_read_from_config_in_both_rope_formats():
    shape = llama_shape(PRUNED)
    assert (shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads) == (48, 40, 6, 2)
    assert (shape.head_dim, shape.head_dim_is_derived, shape.rope_theta) == (4, False, 100000.0)
    # transformers 4.x / our teacher import: rope_theta and rope_scaling at the top level
    old = {k: v for k, v in PRUNED.items() if k != "rope_parameters"}
    old.update(rope_theta=10000.0, rope_scaling=None, head_dim=None)
    shape = llama_shape(old)
    assert (shape.head_dim, shape.head_dim_is_derived, shape.rope_theta) == (8, True, 10000.0)
    assert llama_shape({**old, "tie_word_embeddings": False}).tied_embeddings is False
    assert llama_shape({k: v for k, v in old.items() if k != "architectures"}).num_layers == 2


@pytest.mark.parametrize("change, message", [
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "only Llama-architecture"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "only Llama-architecture"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "RoPE scaling"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling"),
    ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rotary_factor 0.5"),
    ({"num_key_value_heads": 4}, "not a multiple of num_key_value_heads 4"),
    ({"head_dim": 5}, "head_dim 5 is odd"),
])
def test_shapes_gguf_cannot_state_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        llama_shape({**PRUNED, **change})


def test_missing_dimension_is_named():
    with pytest.raises(ValueError, match="lacks 'num_hidden_layers'"):
        llama_shape({k: v for k, v in PRUNED.items() if k != "num_hidden_layers"})


def test_tensors_get_gguf_names_and_interleaved_q_k():
    shape = llama_shape({**PRUNED, "tie_word_embeddings": False})
    d, f, hd = 48, 40, 4
    shapes = {
        "q_proj": (6 * hd, d), "k_proj": (2 * hd, d), "v_proj": (2 * hd, d), "o_proj": (d, 6 * hd),
        "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f),
    }
    sd = {"model.embed_tokens.weight": torch.randn(100, d), "model.norm.weight": torch.randn(d),
          "lm_head.weight": torch.randn(100, d)}
    for i in range(2):
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(d)
        sd[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.randn(d)
        for name, s in shapes.items():
            block = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            sd[f"model.layers.{i}.{block}.{name}.weight"] = torch.randn(s, dtype=torch.bfloat16)
    out = dict(gguf_tensors(sd, shape))
    assert len(out) == len(sd) == 2 + 9 * 2 + 1
    assert all(t.dtype == torch.float32 for t in out.values())
    assert torch.equal(out["output.weight"], sd["lm_head.weight"])
    assert torch.equal(out["blk.1.ffn_down.weight"], sd["model.layers.1.mlp.down_proj.weight"].float())
    q, k = out["blk.0.attn_q.weight"], out["blk.0.attn_k.weight"]
    assert not torch.equal(q, sd["model.layers.0.self_attn.q_proj.weight"].float())
    assert torch.equal(interleaved_to_rotate_half(q, 6), sd["model.layers.0.self_attn.q_proj.weight"].float())
    assert torch.equal(interleaved_to_rotate_half(k, 2), sd["model.layers.0.self_attn.k_proj.weight"].float())
    # the interleaved layout pairs rotate-half row j with row j + head_dim / 2 of the same head
    hf_q = sd["model.layers.0.self_attn.q_proj.weight"].float()
    assert torch.equal(q[hd + 1], hf_q[hd + hd // 2]) and torch.equal(q[hd], hf_q[hd])
