"""Generation and teacher forcing on a tiny random model, against plain loops without a
KV cache, padding or batching."""

import pytest
import torch
from torchtune.data import Message

from jsd_loss.eval import chat_prompt, greedy_generate, load_model, teacher_forced
from jsd_loss.models.smollm2 import smollm2_tokenizer
from tests.conftest import write_tiny_hf_dir
from tests.jsd_loss.eval.conftest import ROWS

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory, teacher_dir):
    path = write_tiny_hf_dir(tmp_path_factory.mktemp("gen") / "m", seed=1, tokenizer_from=teacher_dir,
                             initializer_range=0.5)
    return load_model(str(path), torch.float32, CPU), smollm2_tokenizer(str(teacher_dir / "tokenizer.json"))


@torch.no_grad()
def _greedy_one(model, tokenizer, example, max_new):
    tokens = tokenizer.generation_prompt(chat_prompt(example))
    stops = set(tokenizer.stop_tokens) | {tokenizer.special_tokens["<|endoftext|>"]}
    out = []
    for _ in range(max_new):
        nxt = int(model(torch.tensor([tokens + out]))[0, -1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
    return tokenizer.decode(out).strip()


def test_batched_greedy_generation_equals_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    outputs = greedy_generate(model, tokenizer, ROWS, device=CPU, dtype=torch.float32, batch_size=2,
                              max_new_tokens=5)
    assert outputs == [_greedy_one(model, tokenizer, ex, 5) for ex in ROWS]
    assert any(outputs)


def test_teacher_forcing_scores_the_response_tokens_only(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    tf = teacher_forced(model, tokenizer, ROWS[:2], CPU)
    for i, ex in enumerate(ROWS[:2]):
        prompt, _ = tokenizer.tokenize_messages(chat_prompt(ex) + [Message(role="assistant", content="")])
        full, mask = tokenizer.tokenize_messages(chat_prompt(ex) + [Message(role="assistant", content=ex["response"])])
        n = sum(1 for m in mask[1:] if not m)
        assert tf["n_tokens"][i] == n and n >= len(tokenizer.encode(ex["response"], add_bos=False, add_eos=False))
        with torch.no_grad():
            logits = model(torch.tensor([full]))[0, :-1]
        idx = torch.tensor([j for j, m in enumerate(mask[1:]) if not m])
        target = torch.tensor(full[1:])[idx]
        nll = torch.nn.functional.cross_entropy(logits[idx], target, reduction="sum")
        assert tf["nll"][i] == pytest.approx(float(nll), rel=1e-5)
        assert torch.equal(tf["argmax"][i], logits[idx].argmax(-1))
