import types

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.training import build_model, check_models_agree, text_vocab_size
from tests.conftest import DOLLY
from tests.llama3_tiny import LLAMA3_VOCAB, STUDENT_MODEL, TEACHER_MODEL, write_llama3_tokenizer

META = torch.device("meta")


def test_llama3_tokenizers_image_placeholder_past_the_text_vocab_is_not_a_text_token(tmp_path):
    """torchtune's Llama 3 tokenizer says vocab_size 128257 (<|image|> at 128256, for the vision
    models); the text models have 128,256 embeddings, and text never encodes to the placeholder."""
    from torchtune.data import Message
    from torchtune.models.llama3 import llama3_tokenizer

    tok = llama3_tokenizer(str(write_llama3_tokenizer(tmp_path / "tokenizer.model", DOLLY)))
    assert tok.vocab_size == LLAMA3_VOCAB + 1 and tok.image_id == LLAMA3_VOCAB
    assert text_vocab_size(tok) == LLAMA3_VOCAB
    tokens, _ = tok.tokenize_messages([Message(role="user", content="<|image|> What is 2+2?"),
                                       Message(role="assistant", content="4")])
    assert max(tokens) < LLAMA3_VOCAB
    student, teacher = (build_model(OmegaConf.create(c), META, torch.float32) for c in (STUDENT_MODEL, TEACHER_MODEL))
    check_models_agree(student, teacher, tok)
    small = build_model(OmegaConf.create({**STUDENT_MODEL, "vocab_size": LLAMA3_VOCAB - 1}), META, torch.float32)
    with pytest.raises(ValueError, match="the tokenizer has 128256 tokens but the models only 128255"):
        check_models_agree(small, small, tok)


def test_text_vocab_size_drops_only_media_placeholders_at_the_top_as_llama3s_image_token():
    assert text_vocab_size(types.SimpleNamespace()) is None
    assert text_vocab_size(types.SimpleNamespace(vocab_size=100)) == 100
    assert text_vocab_size(types.SimpleNamespace(vocab_size=100, image_id=99)) == 99
    assert text_vocab_size(types.SimpleNamespace(vocab_size=100, image_id=50)) == 100  # inside: still counted
