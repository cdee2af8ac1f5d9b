import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DOLLY = REPO.parent / "shared" / "data" / "databricks-dolly-15k" / "databricks-dolly-15k.jsonl"

# a tiny SmolLM2-architecture config (real vocab, so the real tokenizer fits it)
TINY = dict(vocab_size=49152, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
            intermediate_dim=64, max_seq_len=256, rope_base=100_000.0, norm_eps=1e-5)


def tiny_hf_config(**overrides):
    from transformers import LlamaConfig

    t = dict(TINY, **overrides)
    return LlamaConfig(
        initializer_range=t.get("initializer_range", 0.02),
        vocab_size=t["vocab_size"], hidden_size=t["embed_dim"], intermediate_size=t["intermediate_dim"],
        num_hidden_layers=t["num_layers"], num_attention_heads=t["num_heads"],
        num_key_value_heads=t["num_kv_heads"], max_position_embeddings=t["max_seq_len"],
        rope_theta=t["rope_base"], rms_norm_eps=t["norm_eps"], tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu",
    )


@pytest.fixture(scope="session")
def gguf_path():
    from jsd_loss.prepare import default_gguf_path

    path = default_gguf_path()
    assert path.is_file(), f"{path} missing: run scripts/setup.sh"
    return path


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, gguf_path):
    """The real SmolLM2-135M-Instruct, imported from the GGUF once per test session."""
    from jsd_loss.prepare import prepare_teacher_from_gguf

    return prepare_teacher_from_gguf(tmp_path_factory.mktemp("models") / "teacher", gguf_path)


@pytest.fixture(scope="session")
def gguf_reference(gguf_path):
    """Independent reference: transformers' own GGUF loader (model and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def reference_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def tokenizer_json(teacher_dir):
    return teacher_dir / "tokenizer.json"


def write_tiny_hf_dir(path: Path, seed: int = 0, tokenizer_from: Path = None, **overrides) -> Path:
    """A tiny random HF Llama (SmolLM2 architecture) saved as a standard HF directory."""
    import shutil

    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_hf_config(**overrides))
    model.save_pretrained(str(path))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json"):
            shutil.copy2(tokenizer_from / name, path / name)
    return path
