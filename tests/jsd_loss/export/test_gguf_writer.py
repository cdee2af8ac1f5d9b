"""Tiny random Llamas exported to GGUF and read back by independent readers: transformers'
GGUF loader (logits and weights against transformers on the HF directory) and gguf's reader."""

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.export import export_gguf
from jsd_loss.prepare import prepare_teacher_from_gguf, read_gguf
from tests.jsd_loss.export.tiny_llama import write_tiny_llama

# the shapes a student can have: the teacher's proportions, width-pruned (head_dim 16 is not
# hidden 32 // 4 heads, and FFN rows of 48 are not whole Q8_0 blocks), and an untied head
SHAPES = {
    "tied": {},
    "width_pruned": {"head_dim": 16, "intermediate_dim": 48},
    "untied": {"tied": False},
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, teacher_dir):
    root = tmp_path_factory.mktemp("tiny_export")
    return {name: write_tiny_llama(root / name, teacher_dir, seed=i, **kw)
            for i, (name, kw) in enumerate(SHAPES.items())}


@pytest.fixture(scope="module")
def exported(tiny_dirs, tmp_path_factory):
    """``exported(shape, out_type)``: that tiny model's GGUF, written once per module."""
    root, files = tmp_path_factory.mktemp("gguf"), {}

    def get(shape, out_type):
        if (shape, out_type) not in files:
            files[shape, out_type] = root / f"{shape}.{out_type}.gguf"
            export_gguf(tiny_dirs[shape], files[shape, out_type], out_type)
        return files[shape, out_type]

    return get


def _load_gguf(path):
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_f32_logits_equal_the_hf_directory_through_transformers_gguf_loader(shape, tiny_dirs, exported):
    model_dir = tiny_dirs[shape]
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ours = _load_gguf(exported(shape, "f32"))
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "num_hidden_layers", "vocab_size", "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(ours.config, key) == getattr(ref.config, key), key
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    print(f"{shape}: f32 max |logit diff| {diff:.3g}")
    assert diff <= 1e-4


def _block_bound(w: torch.Tensor) -> torch.Tensor:
    """Largest error Q8_0 may make per element: half a step of amax/127 per 32-block, plus
    the float16 rounding of that step (over 127 steps)."""
    blocks = w.reshape(w.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    return (amax * (0.5 / 127 + 1 / 2048) * 1.001 + 1e-12).expand_as(blocks).reshape(w.shape)


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_f16_and_q8_0_weights_are_within_rounding_of_the_originals(out_type, tiny_dirs, exported):
    model_dir, out = tiny_dirs["width_pruned"], exported("width_pruned", out_type)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    two_d = "F16" if out_type == "f16" else "Q8_0"
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_gate.weight"] == types["token_embd.weight"] == two_d
    assert types["blk.1.ffn_down.weight"] == "F16"  # rows of 48: no whole Q8_0 blocks, llama.cpp's fallback
    assert len(types) == 2 + 2 * 9

    hf = load_state_dict(model_dir)
    loaded = _load_gguf(out).state_dict()
    for key, w in hf.items():
        err = (loaded[key] - w).abs()
        if w.ndim == 1:
            assert torch.equal(loaded[key], w), key
        elif out_type == "f16" or "down_proj" in key:
            assert (err <= w.abs() * 2.0**-11 + 2.0**-25).all(), key
        else:
            assert (err <= _block_bound(w)).all(), key
            assert err.max() > 0, key  # it really was quantized


def test_import_export_import_gives_the_same_weights_and_tokenizer(exported, tmp_path):
    first = exported("tied", "q8_0")
    imported = prepare_teacher_from_gguf(tmp_path / "imported", first)  # the teacher import
    again = tmp_path / "again.f32.gguf"
    export_gguf(imported, again, "f32")
    a, b = read_gguf(first), read_gguf(again)
    assert a.config == b.config
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert all(torch.equal(a.state_dict[k], v) for k, v in load_state_dict(imported).items())
    for field in ("tokens", "token_types", "merges", "bos_id", "eos_id", "unk_id", "pad_id",
                  "chat_template", "pre_tokenizer"):
        assert getattr(a, field) == getattr(b, field), field
    # and the f32 file stores those weights bit for bit (gguf's reader, not ours)
    raw = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(again)).tensors}
    assert np.array_equal(raw["blk.1.ffn_up.weight"], a.state_dict["model.layers.1.mlp.up_proj.weight"].numpy())


def test_width_pruned_head_dim_is_stated_for_llama_cpp(exported):
    fields = gguf.GGUFReader(str(exported("width_pruned", "f32"))).fields
    value = lambda key: fields[key].contents()
    assert value("llama.attention.key_length") == value("llama.attention.value_length") == 16
    assert value("llama.rope.dimension_count") == 16
    assert (value("llama.embedding_length"), value("llama.feed_forward_length")) == (32, 48)
    tied = gguf.GGUFReader(str(exported("tied", "f32"))).fields
    assert "llama.attention.key_length" not in tied  # llama.cpp derives it


def test_encode_tensor_types_and_refusals():
    from jsd_loss.export import encode_tensor

    Q = gguf.GGMLQuantizationType
    w = torch.randn(4, 64)
    assert encode_tensor("w", w, "f32")[1] == Q.F32 and encode_tensor("n", torch.ones(64), "q8_0")[1] == Q.F32
    blocks, qtype = encode_tensor("w", w, "q8_0")
    assert qtype == Q.Q8_0 and blocks.dtype == np.uint8 and blocks.shape == (4, 2 * 34)
    assert encode_tensor("w", torch.randn(4, 48), "q8_0")[1] == Q.F16  # not whole 32-blocks
    with pytest.raises(ValueError, match="beyond float16's range"):
        encode_tensor("big", torch.full((2, 32), 7e4), "f16")
    with pytest.raises(ValueError, match="tensor nan holds non-finite values"):
        encode_tensor("nan", torch.tensor([[float("nan")] * 32]), "q8_0")
