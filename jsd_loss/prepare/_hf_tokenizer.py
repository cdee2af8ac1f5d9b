"""Build HF tokenizer files (``tokenizer.json`` and friends) from GGUF tokenizer data."""

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from jsd_loss.prepare._gguf import GGUFModel

_CONTROL = 3  # llama.cpp token type of special (control) tokens

# llama.cpp's pre-tokenizer names -> the HF pre-tokenizer that splits text the same way.
# "smollm" (StarCoder-style): every digit on its own, then GPT-2's byte-level regex.
_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ]),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


def build_tokenizer(model: GGUFModel) -> Tokenizer:
    if model.pre_tokenizer not in _PRE_TOKENIZERS:
        raise ValueError(
            f"unsupported GGUF pre-tokenizer {model.pre_tokenizer!r}; known: {sorted(_PRE_TOKENIZERS)}"
        )
    vocab = {tok: i for i, tok in enumerate(model.tokens)}
    if len(vocab) != len(model.tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens")
    merges = [tuple(m.split(" ", 1)) for m in model.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _PRE_TOKENIZERS[model.pre_tokenizer]()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(model.tokens, model.token_types)
        if kind == _CONTROL
    ])
    return tok


def write_tokenizer_files(model: GGUFModel, target: Path) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` (with the chat template),
    ``special_tokens_map.json`` and ``generation_config.json``."""
    target = Path(target)
    build_tokenizer(model).save(str(target / "tokenizer.json"))
    names = {k: model.tokens[i] for k, i in
             (("bos_token", model.bos_id), ("eos_token", model.eos_id),
              ("unk_token", model.unk_id), ("pad_token", model.pad_id))}
    specials = [t for t, kind in zip(model.tokens, model.token_types) if kind == _CONTROL]
    tokenizer_config = {
        **names,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": model.chat_template,
        "model_max_length": model.config["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
        "added_tokens_decoder": {
            str(model.tokens.index(t)): {"content": t, "special": True, "normalized": False,
                                         "lstrip": False, "rstrip": False, "single_word": False}
            for t in specials
        },
    }
    files = {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": {**names, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
        "generation_config.json": {
            "bos_token_id": model.bos_id,
            "eos_token_id": model.eos_id,
            "pad_token_id": model.pad_id,
        },
    }
    for name, obj in files.items():
        (target / name).write_text(json.dumps(obj, indent=2) + "\n")
