import json

import pytest
import torch
from safetensors.torch import save_file

from jsd_loss.checkpointing import atomic_directory, check_llama_dims, load_state_dict, write_model_dir


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        write_model_dir(tmp, {"w": torch.ones(2)}, {"a": 1})
    assert json.loads((out / "config.json").read_text()) == {"a": 1}
    with pytest.raises(FileExistsError):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            write_model_dir(tmp, {"w": torch.zeros(2)}, {"a": 2})
            raise RuntimeError("interrupted")
    # the old directory is intact and no temporary directory is left behind
    assert json.loads((out / "config.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_directory(out, overwrite=True) as tmp:
        write_model_dir(tmp, {"w": torch.zeros(2)}, {"a": 2})
    assert torch.equal(load_state_dict(out)["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_sharded_weights_are_merged_and_missing_shards_reported(tmp_path):
    save_file({"a": torch.ones(1)}, str(tmp_path / "m-1.safetensors"))
    save_file({"b": torch.zeros(1)}, str(tmp_path / "m-2.safetensors"))
    index = {"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(load_state_dict(tmp_path)) == ["a", "b"]
    (tmp_path / "m-2.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing weight shards"):
        load_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict(tmp_path)


def test_config_weight_disagreement_is_named():
    cfg = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10,
           "intermediate_size": 16, "num_hidden_layers": 1}
    sd = {"model.embed_tokens.weight": torch.zeros(10, 8), "model.norm.weight": torch.zeros(8)}
    p = "model.layers.0."
    sd.update({p + "self_attn.q_proj.weight": torch.zeros(8, 8), p + "self_attn.k_proj.weight": torch.zeros(4, 8),
               p + "self_attn.v_proj.weight": torch.zeros(4, 8), p + "self_attn.o_proj.weight": torch.zeros(8, 8),
               p + "mlp.gate_proj.weight": torch.zeros(16, 8), p + "mlp.up_proj.weight": torch.zeros(16, 8),
               p + "mlp.down_proj.weight": torch.zeros(8, 16), p + "input_layernorm.weight": torch.zeros(8),
               p + "post_attention_layernorm.weight": torch.zeros(8)})
    check_llama_dims(cfg, sd, "ok")
    with pytest.raises(ValueError, match="k_proj.weight has shape"):
        check_llama_dims({**cfg, "num_key_value_heads": 2}, sd, "dir")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        check_llama_dims({**cfg, "num_hidden_layers": 2}, sd, "dir")
    with pytest.raises(ValueError, match="lacks 'vocab_size'"):
        check_llama_dims({k: v for k, v in cfg.items() if k != "vocab_size"}, sd, "dir")
