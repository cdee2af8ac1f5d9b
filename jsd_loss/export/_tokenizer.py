"""A HF byte-level BPE tokenizer (``tokenizer.json`` and friends) as GGUF's ``tokenizer.*`` metadata.

The inverse of :func:`jsd_loss.prepare._hf_tokenizer.build_tokenizer`: the same two
pre-tokenizers are recognised by structure and named as llama.cpp names them.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from gguf import TokenType

from jsd_loss.checkpointing import read_config

_DIGITS = {"type": "Digits", "individual_digits": True}
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


@dataclass
class GGUFTokenizer:
    """What the GGUF states about the tokenizer; ids index ``tokens``."""

    tokens: List[str]
    token_types: List[int]  # gguf.TokenType values
    merges: List[str]  # "left right"
    pre: str  # llama.cpp's pre-tokenizer name
    bos_id: Optional[int]
    eos_id: Optional[int]
    unk_id: Optional[int]
    pad_id: Optional[int]
    add_bos: bool
    chat_template: Optional[str]


def _is_byte_level(spec: Optional[dict]) -> bool:
    # trim_offsets only changes reported offsets, never the split
    return spec is not None and all(spec.get(k) == v for k, v in _BYTE_LEVEL.items())


def _pre_tokenizer_name(spec: Optional[dict]) -> str:
    """llama.cpp's name for a ``tokenizer.json`` pre-tokenizer."""
    if spec and spec.get("type") == "Sequence":
        steps = spec.get("pretokenizers", [])
        if len(steps) == 2 and steps[0] == _DIGITS and _is_byte_level(steps[1]):
            return "smollm"  # digits one by one, then GPT-2's regex (StarCoder / SmolLM)
    elif _is_byte_level(spec):
        return "gpt-2"
    raise ValueError(
        f"tokenizer.json's pre-tokenizer {json.dumps(spec)} is not one the export can name for "
        "llama.cpp (known: 'smollm' = Digits(individual) + ByteLevel, 'gpt-2' = ByteLevel)"
    )


def _token_list(model: dict, added: List[dict]) -> tuple:
    """``(tokens, token_types)`` indexed by id, refusing gaps and duplicates."""
    by_id = {int(i): tok for tok, i in model["vocab"].items()}
    kinds = {i: TokenType.NORMAL for i in by_id}
    for t in added:
        by_id[int(t["id"])] = t["content"]
        kinds[int(t["id"])] = TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError("tokenizer.json's token ids are not contiguous from 0")
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(set(tokens)) != len(tokens):
        raise ValueError("tokenizer.json maps two ids to the same token")
    return tokens, [int(kinds[i]) for i in range(len(tokens))]


def _token_id(name_or_spec, tokens: List[str]) -> Optional[int]:
    """The id of a ``tokenizer_config.json`` special token (a string or an AddedToken dict)."""
    if isinstance(name_or_spec, dict):
        name_or_spec = name_or_spec.get("content")
    if name_or_spec is None:
        return None
    if name_or_spec not in tokens:
        raise ValueError(f"tokenizer_config.json names special token {name_or_spec!r}, absent from the vocabulary")
    return tokens.index(name_or_spec)


def _chat_template(model_dir: Path, tokenizer_config: dict) -> Optional[str]:
    """The default chat template: ``chat_template.jinja`` (transformers 5) or the config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _first(value) -> Optional[int]:
    return value[0] if isinstance(value, list) and value else value


def read_hf_tokenizer(model_dir: Path, vocab_size: int) -> GGUFTokenizer:
    """Read a HF directory's byte-level BPE tokenizer for GGUF.

    Args:
        model_dir (Path): a HF model directory with ``tokenizer.json``.
        vocab_size (int): rows of the embedding matrix; llama.cpp needs one token per row.

    Returns:
        GGUFTokenizer: tokens, types (special added tokens are CONTROL, other added tokens
        USER_DEFINED), merges, special ids (``tokenizer_config.json`` first, ``config.json``
        as the fallback, as llama.cpp's converter does) and the chat template.

    Raises:
        FileNotFoundError: without ``tokenizer.json``.
        ValueError: for a tokenizer GGUF's ``gpt2`` model cannot state, or a vocabulary
            whose size differs from ``vocab_size``.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json: the GGUF needs the tokenizer")
    spec = json.loads(path.read_text())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") is not None:
        raise ValueError(
            f"{path} is a {model.get('type')} tokenizer with normalizer {spec.get('normalizer')}; "
            "only byte-level BPE without a normalizer (GGUF tokenizer model 'gpt2') is exported"
        )
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    tokens, token_types = _token_list(model, spec.get("added_tokens") or [])
    if len(tokens) != vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokens)} tokens but the embeddings have {vocab_size} rows; "
            "a GGUF needs exactly one token per row"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    config_path = model_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config = read_config(model_dir)
    ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        named = _token_id(tok_config.get(f"{key}_token"), tokens)
        ids[key] = named if named is not None else _first(config.get(f"{key}_token_id"))
    if ids["unk"] is None and model.get("unk_token") in tokens:
        ids["unk"] = tokens.index(model["unk_token"])
    return GGUFTokenizer(
        tokens=tokens,
        token_types=token_types,
        merges=merges,
        pre=pre,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unk_id=ids["unk"],
        pad_id=ids["pad"],
        add_bos=bool(tok_config.get("add_bos_token", False)),
        chat_template=_chat_template(model_dir, tok_config),
    )
