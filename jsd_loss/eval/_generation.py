"""Running a model on the eval set: loading it, greedy answers to the prompts, and its
next-token predictions and NLL on the reference responses (teacher forcing)."""

from typing import Dict, List, Optional

import torch
from torchtune.data import Message
from torchtune.generation import generate
from torchtune.modules import TransformerDecoder
from torchtune.modules.common_utils import delete_kv_caches
from tqdm import tqdm

from jsd_loss.datasets import prompt_text
from jsd_loss.eval._examples import Example
from jsd_loss.models.smollm2 import smollm2_from_hf


def load_model(checkpoint_dir: str, dtype: torch.dtype, device: torch.device) -> TransformerDecoder:
    """A HF model directory as a torchtune model in eval mode (dimensions from its config.json)."""
    return smollm2_from_hf(checkpoint_dir, dtype=dtype).to(device)


def chat_prompt(example: Example) -> List[Message]:
    """The user turn of ``example`` (instruction and context, as in training)."""
    return [Message(role="user", content=prompt_text(example), masked=True)]


@torch.no_grad()
def greedy_generate(
    model: TransformerDecoder,
    tokenizer,
    examples: List[Example],
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 512,
    desc: str = "generate",
    token_counts: Optional[List[int]] = None,
) -> List[str]:
    """Greedy answers (top-1, KV cache), batched with left padding; each stops at the
    tokenizer's stop tokens. Prompts are cut to their last ``max_prompt_tokens`` tokens.
    When ``token_counts`` is given, each answer's generated token count (up to its stop token)
    is appended to it."""
    # a pad id that never occurs in a ChatML prompt (<|im_end|> does, so it cannot pad)
    pad_id = tokenizer.special_tokens["<|endoftext|>"]
    stops = set(tokenizer.stop_tokens) | {pad_id}
    outputs = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=None):
        batch = examples[start : start + batch_size]
        prompts = [tokenizer.generation_prompt(chat_prompt(ex))[-max_prompt_tokens:] for ex in batch]
        width = max(map(len, prompts))
        x = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        with device:
            model.setup_caches(batch_size=len(batch), dtype=dtype, decoder_max_seq_len=width + max_new_tokens)
        tokens, _ = generate(
            model, x, max_generated_tokens=max_new_tokens, pad_id=pad_id, temperature=1.0, top_k=1,
            stop_tokens=tokenizer.stop_tokens,
        )
        delete_kv_caches(model)  # the next batch may differ in size
        for row in tokens[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), len(row))
            outputs.append(tokenizer.decode(row[:end]).strip())
            if token_counts is not None:
                token_counts.append(end)
    return outputs


@torch.no_grad()
def teacher_forced(
    model: TransformerDecoder, tokenizer, examples: List[Example], device: torch.device
) -> Dict[str, List]:
    """Per example, over the reference response's tokens: the model's next-token argmax
    (``argmax``, a tensor), summed NLL (``nll``) and token count (``n_tokens``)."""
    argmaxes, nll, n_tokens = [], [], []
    for ex in examples:
        msgs = chat_prompt(ex) + [Message(role="assistant", content=ex["response"])]
        tokens, mask = tokenizer.tokenize_messages(msgs)
        x = torch.tensor([tokens], device=device)
        logits = model(x)[0, :-1].float()
        target = x[0, 1:]
        resp = ~torch.tensor(mask[1:], dtype=torch.bool, device=device)
        logp = torch.log_softmax(logits[resp], -1).gather(-1, target[resp].unsqueeze(-1)).squeeze(-1)
        argmaxes.append(logits[resp].argmax(-1).cpu())
        nll.append(-logp.sum().item())
        n_tokens.append(int(resp.sum()))
    return {"argmax": argmaxes, "nll": nll, "n_tokens": n_tokens}
