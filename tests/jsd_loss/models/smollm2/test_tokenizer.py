import json

import pytest
import regex
from torchtune.data import Message

from jsd_loss.models.smollm2 import SmolLM2Tokenizer, smollm2_tokenizer
from tests.conftest import DOLLY

TRICKY = [
    "12345 + 67.89 = 12413.89, phone 555-0199, year 2024",
    "naïve café — Ünïcödé ✓ 東京 😀 ﬁ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "  leading spaces\n\n\ttabs   and\r\nCRLF  ",
    "",
]


def _dolly_texts(n=500):
    with open(DOLLY) as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    return [r[k] for r in rows for k in ("instruction", "context", "response") if r[k]]


# GPT-2's pre-tokenizer regex. llama.cpp's "smollm" pre-tokenizer (named in the GGUF)
# first isolates every \p{N} and then applies this regex to the text between digits.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _llama_cpp_smollm_pieces(text):
    pieces = []
    for part in regex.split(r"(\p{N})", text):
        if part:
            pieces.extend([part] if regex.fullmatch(r"\p{N}", part) else regex.findall(_GPT2, part))
    return pieces


def _reference_ids(reference_tokenizer, text):
    """transformers' GGUF tokenizer (vocab, merges, byte mapping) applied to llama.cpp's
    smollm pre-tokenization. transformers does not know the 'smollm' pre-tokenizer and
    falls back to plain GPT-2 splitting, which differs where whitespace precedes a digit."""
    ids = []
    for piece in _llama_cpp_smollm_pieces(text):
        ids.extend(reference_tokenizer.encode(piece, add_special_tokens=False))
    return ids


def test_ids_equal_reference_tokenizer_on_dolly_and_tricky_text(tokenizer_json, reference_tokenizer):
    ours = smollm2_tokenizer(str(tokenizer_json))
    texts = _dolly_texts() + TRICKY[:2] + TRICKY[3:]
    mismatches = [t for t in texts if ours.encode(t) != _reference_ids(reference_tokenizer, t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"
    # where no whitespace precedes a digit the two splittings agree: compare directly too
    plain = [t for t in texts if not regex.search(r"\s\p{N}", t)]
    assert len(plain) > 300
    assert all(ours.encode(t) == reference_tokenizer.encode(t, add_special_tokens=False) for t in plain)
    # special-token strings map to their ids, as in the reference
    special = TRICKY[2]
    assert ours.encode(special) == reference_tokenizer.encode(special, add_special_tokens=False)
    for t in TRICKY:
        assert ours.decode(ours.encode(t), skip_special_tokens=False) == t


def test_digits_are_split_individually(tokenizer_json):
    ours = smollm2_tokenizer(str(tokenizer_json))
    assert [ours.decode([i]) for i in ours.encode("2024")] == ["2", "0", "2", "4"]


def test_chatml_equals_the_models_chat_template(tokenizer_json, reference_tokenizer):
    ours = smollm2_tokenizer(str(tokenizer_json))
    chat = [{"role": "user", "content": "What is 2+2?\nAnswer briefly."},
            {"role": "assistant", "content": " It is 4."}]
    ref = reference_tokenizer.apply_chat_template(chat, tokenize=False)
    tokens, mask = ours.tokenize_messages(
        [Message(role="user", content=chat[0]["content"], masked=True),
         Message(role="assistant", content=chat[1]["content"])]
    )
    assert tokens == reference_tokenizer.encode(ref, add_special_tokens=False)
    assert ours.decode(tokens, skip_special_tokens=False) == ref
    # system (inserted) and user masked, the assistant turn trained on
    first_assistant = len(tokens) - len(ours.encode("assistant\n It is 4.")) - 3
    assert all(mask[:first_assistant]) and not any(mask[first_assistant:])
    gen = ours.generation_prompt([Message(role="user", content="hi")])
    ref_gen = reference_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert gen == reference_tokenizer.encode(ref_gen, add_special_tokens=False)


def test_special_ids_and_truncation(tokenizer_json):
    tok = smollm2_tokenizer(str(tokenizer_json), max_seq_len=16)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 49152)
    tokens, mask = tok.tokenize_messages(
        [Message(role="user", content="word " * 50, masked=True), Message(role="assistant", content="ok")]
    )
    assert len(tokens) == len(mask) == 16 and tokens[-1] == tok.eos_id


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        SmolLM2Tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid HF tokenizer.json"):
        SmolLM2Tokenizer(str(bad))
