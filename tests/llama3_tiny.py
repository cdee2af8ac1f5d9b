"""Tiny random Llama-3-shaped HF checkpoints and a tiktoken tokenizer in Llama 3's id layout, for
the tests of the Llama 3.1 8B -> Llama 3.2 1B configs (the real weights are not reachable here).

As the real ones: the vocabulary is Llama 3's 128,256 ids (the tokenizer's special tokens at
128000-128255 and ``<|image|>`` at 128256, torchtune's defaults); the teacher is Llama 3.1-shaped
(untied output, rope scaling factor 8), the student Llama 3.2-shaped (tied embeddings, factor 32);
``config.json`` is written in the hub's layout (``rope_theta``, ``rope_scaling``); the teacher is
sharded; the tokenizer lives in ``original/tokenizer.model``. Only the widths and depths are tiny.
"""

import base64
import json
import re
from collections import Counter
from pathlib import Path

import torch

LLAMA3_VOCAB = 128_256
# Meta's Llama 3 rope scaling beside the factor, which torchtune's Llama3ScaledRoPE hard-wires
SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
           "rope_type": "llama3"}
_COMMON = dict(vocab_size=LLAMA3_VOCAB, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=512,
               rope_base=500_000, norm_eps=1e-5)
# arguments of torchtune's component builders (the shipped configs use llama3_1_8b / llama3_2_1b)
TEACHER = dict(_COMMON, embed_dim=64, intermediate_dim=128, scale_factor=8)
STUDENT = dict(_COMMON, embed_dim=32, intermediate_dim=64, scale_factor=32, tie_word_embeddings=True)
TEACHER_MODEL = {"_component_": "torchtune.models.llama3_1.llama3_1", **TEACHER}
STUDENT_MODEL = {"_component_": "torchtune.models.llama3_2.llama3_2", **STUDENT}
LORA_STUDENT_MODEL = {"_component_": "torchtune.models.llama3_2.lora_llama3_2", **STUDENT,
                      "lora_attn_modules": ["q_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
                      "apply_lora_to_output": False, "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0}


def hub_config(shape: dict, tied: bool, initializer_range: float = 0.02) -> dict:
    """``config.json`` as the hub's Llama 3.1 / 3.2 files state it (transformers 4's layout)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "hidden_size": shape["embed_dim"], "intermediate_size": shape["intermediate_dim"],
        "num_hidden_layers": shape["num_layers"], "num_attention_heads": shape["num_heads"],
        "num_key_value_heads": shape["num_kv_heads"], "max_position_embeddings": 131072,
        "rms_norm_eps": shape["norm_eps"], "rope_theta": float(shape["rope_base"]),
        "rope_scaling": {"factor": float(shape["scale_factor"]), **SCALING},
        "tie_word_embeddings": tied, "vocab_size": shape["vocab_size"], "initializer_range": initializer_range,
        "torch_dtype": "bfloat16", "use_cache": True,
    }


def write_llama3_tokenizer(path: Path, corpus: Path, num_words: int = 400) -> Path:
    """A tiktoken BPE file (base64 token, rank per line, as Meta's ``tokenizer.model``): the 256
    bytes, then every prefix of the most frequent words of ``corpus``'s first rows (with and
    without a leading space), so common words are single tokens. torchtune's
    ``llama3_tokenizer`` reads it with its default (canonical) special tokens."""
    text = "\n".join(json.loads(line)["response"] for line in corpus.read_text().splitlines()[:500])
    counts = Counter(m.group() for m in re.finditer(r" ?[A-Za-z]+", text))
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:num_words]:
        for w in {word, word.strip()}:
            for end in range(2, len(w) + 1):
                piece = w[:end].encode()
                if piece not in seen:
                    seen.add(piece)
                    tokens.append(piece)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


def write_llama3_dir(path: Path, shape: dict, tied: bool, seed: int, corpus: Path,
                     initializer_range: float = 0.02, max_shard_size=None) -> Path:
    """A tiny random Llama 3 HF directory: weights by transformers, ``config.json`` in the hub's
    layout, the tokenizer in ``original/tokenizer.model``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = hub_config(shape, tied, initializer_range)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(path), **kwargs)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_llama3_tokenizer(path / "original" / "tokenizer.model", corpus)
    return path


def weight_files(path: Path) -> list:
    return sorted(p.name for p in path.glob("*.safetensors"))


def torchtune_model(model_cfg: dict, hf_dir: Path, model_type: str, tmp: Path):
    """The model ``model_cfg`` builds, with ``hf_dir``'s weights as torchtune's own
    FullModelHFCheckpointer reads them for ``model_type``, in eval mode."""
    from omegaconf import OmegaConf
    from torchtune import config
    from torchtune.training import FullModelHFCheckpointer

    model = config.instantiate(OmegaConf.create(model_cfg))
    state = FullModelHFCheckpointer(
        checkpoint_dir=str(hf_dir), checkpoint_files=weight_files(hf_dir), model_type=model_type, output_dir=str(tmp),
    ).load_checkpoint()["model"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def hf_model(hf_dir: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
