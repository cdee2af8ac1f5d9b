import pytest
import torch

from jsd_loss.models.smollm2 import (
    lora_smollm2_135m,
    smollm2,
    smollm2_135m,
    smollm2_90m,
    smollm2_tune_to_hf,
)
from tests.conftest import TINY, tiny_hf_config


def _params(vocab, dim, layers, heads, kv_heads, ffn):
    head_dim = dim // heads
    attn = dim * dim * 2 + 2 * dim * kv_heads * head_dim
    return vocab * dim + dim + layers * (attn + 3 * dim * ffn + 2 * dim)


def test_parameter_counts_from_the_hf_config_numbers():
    assert sum(p.numel() for p in smollm2_135m().parameters()) == _params(49152, 576, 30, 9, 3, 1536)
    n90 = sum(p.numel() for p in smollm2_90m().parameters())
    assert n90 == _params(49152, 576, 30, 9, 3, 648) == 88_481_088
    # the default student's MLP width is the multiple of 8 nearest the old 17-layer size
    old = _params(49152, 576, 17, 9, 3, 1536)
    assert min(range(8, 1537, 8), key=lambda f: abs(_params(49152, 576, 30, 9, 3, f) - old)) == 648


def test_135m_matches_gguf_metadata(gguf_path):
    import gguf

    r = gguf.GGUFReader(str(gguf_path))
    meta = {k: r.fields[k].contents() for k in r.fields if k.startswith("llama.")}
    m = smollm2_135m()
    attn = m.layers[0].attn
    assert len(m.layers) == meta["llama.block_count"]
    assert m.tok_embeddings.embedding_dim == meta["llama.embedding_length"]
    assert m.layers[0].mlp.w1.out_features == meta["llama.feed_forward_length"]
    assert attn.num_heads == meta["llama.attention.head_count"]
    assert attn.num_kv_heads == meta["llama.attention.head_count_kv"]
    assert attn.pos_embeddings.base == meta["llama.rope.freq_base"]
    assert m.tok_embeddings.num_embeddings == meta["llama.vocab_size"]
    assert abs(m.norm.eps - meta["llama.attention.layer_norm_rms_epsilon"]) < 1e-10


@pytest.mark.parametrize("rope_base", [100_000.0, 130_000.0])
def test_tiny_model_matches_transformers_llama(rope_base):
    """Same weights in our torchtune SmolLM2 and in HF's LlamaForCausalLM (plain RoPE)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ours = smollm2(**dict(TINY, rope_base=rope_base)).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ref = LlamaForCausalLM(tiny_hf_config(rope_base=rope_base)).eval()
    missing, unexpected = ref.load_state_dict(
        smollm2_tune_to_hf(ours.state_dict(), TINY["num_heads"], TINY["num_kv_heads"]), strict=False
    )
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    ref.tie_weights()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), ref(tokens).logits, rtol=1e-4, atol=1e-4)


def test_lora_builder_has_stock_arguments_and_adapts():
    m = lora_smollm2_135m(["q_proj", "v_proj"], apply_lora_to_mlp=False, lora_rank=8, lora_alpha=16)
    lora = {n: p.numel() for n, p in m.named_parameters() if "lora_" in n}
    # per layer: q (576->576) and v (576->192), each A (r x in) + B (out x r)
    assert sum(lora.values()) == 30 * ((576 * 8 + 8 * 576) + (576 * 8 + 8 * 192))
    with pytest.raises(ValueError, match="tied"):
        lora_smollm2_135m(["q_proj"], apply_lora_to_output=True)


class _LinearInputs(torch.overrides.TorchFunctionMode):
    """Records the input of every ``F.linear`` call."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.inputs.append(args[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_output_projects_contiguous_slices_to_the_full_logits(dtype):
    """A slice of the sequence dim of a 2-row batch is not contiguous; the output projection
    must not hand one to ``F.linear`` (its CPU fallback copies the whole weight per row)."""
    torch.manual_seed(0)
    model = smollm2(**TINY).to(dtype).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 16))
    with torch.no_grad():
        full = model(tokens)
        model.set_num_output_chunks(4)
        with _LinearInputs() as seen:
            chunks = model(tokens)
    vocab_inputs = [x for x in seen.inputs if x.shape[-2] == 4]  # the 4 chunks of 4 positions
    assert len(vocab_inputs) == 4 and all(x.is_contiguous() for x in vocab_inputs)
    torch.testing.assert_close(torch.cat(chunks, 1).float(), full, rtol=0, atol=0)
