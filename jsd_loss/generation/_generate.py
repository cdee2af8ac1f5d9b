"""Batched sampling with torchtune's KV cache: prompts of different lengths left-padded into
one batch, each row stopping at its stop token or its own token budget."""

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torchtune.generation import get_causal_mask_from_padding_mask
from torchtune.modules.common_utils import delete_kv_caches

from jsd_loss.generation._sampling import check_sampling, draw_uniform, sample


@contextlib.contextmanager
def generation_mode(model: nn.Module, *, batch_size: int, dtype: torch.dtype, cache_len: int,
                    device: torch.device) -> Iterator[None]:
    """Within the block ``model`` (a torchtune ``TransformerDecoder``, possibly sharded or
    activation-checkpointed) is in eval mode with KV caches for ``batch_size`` rows of
    ``cache_len`` positions and returns the logits (B, 1, V) of the last position only, whole
    (no output chunks). Afterwards the caches are deleted and the mode, output chunks and
    output restored, so training continues as before."""
    was_training, chunks = model.training, model.num_output_chunks
    unembed = type(model).unembed
    model.eval()
    model.num_output_chunks = 0
    # forward calls self.unembed(h): only the last position's logits are ever needed
    model.unembed = lambda h: unembed(model, h[:, -1:])
    try:
        with torch.device(device):
            model.setup_caches(batch_size=batch_size, dtype=dtype, decoder_max_seq_len=cache_len)
        yield
    finally:
        delete_kv_caches(model)
        del model.unembed
        model.num_output_chunks = chunks
        model.train(was_training)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_tokens: Sequence[int],
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    budgets: Optional[Sequence[int]] = None,
    pad_id: int = 0,
    all_done: Optional[Callable[[bool], bool]] = None,
) -> List[List[int]]:
    """
    Sample a continuation of every prompt from ``model``, all rows in one batch with a KV
    cache (one forward of the left-padded prompts, then one position per step).

    Each step draws one uniform number per row from ``generator`` (see
    :func:`~jsd_loss.generation.sample`), rows that have stopped included, so the draws
    depend only on the generator's state and the number of steps.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``; its mode and output chunks are
            restored afterwards.
        prompts (Sequence[Sequence[int]]): token ids of each prompt (each non-empty).
        max_new_tokens (int): at most this many tokens per row (the size of the KV cache
            beyond the prompts, and the most steps taken).
        stop_tokens (Sequence[int]): a row stops after generating one of these (it is kept).
        generator (torch.Generator): a CPU generator for the draws.
        dtype (torch.dtype): dtype of the KV caches (the model's).
        device (torch.device): the model's device.
        temperature (float): sampling temperature; 0 is greedy. Default: 1.0
        top_k (Optional[int]): sample among the ``top_k`` most probable tokens. Default: None
        budgets (Optional[Sequence[int]]): per row, at most this many tokens (each between 1
            and ``max_new_tokens``). Default: ``max_new_tokens`` for every row
        pad_id (int): token fed at padding positions (masked out of attention). Default: 0
        all_done (Optional[Callable[[bool], bool]]): given whether every row here has stopped,
            whether every process has: processes whose forwards are collectives (FSDP) must
            take the same number of steps. Default: None (this process alone)

    Returns:
        List[List[int]]: the generated tokens of each row, up to and including its stop token.

    Raises:
        ValueError: for an empty prompt, ``max_new_tokens`` below 1, a budget outside
            [1, max_new_tokens], or a bad temperature or top_k.
    """
    check_sampling(temperature, top_k)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    budgets = [max_new_tokens] * len(prompts) if budgets is None else list(budgets)
    if len(budgets) != len(prompts) or any(not 1 <= b <= max_new_tokens for b in budgets):
        raise ValueError(f"budgets must give each of the {len(prompts)} rows 1 to {max_new_tokens} tokens: {budgets}")
    lengths = [len(p) for p in prompts]
    if not lengths or min(lengths) < 1:
        raise ValueError("every prompt needs at least one token")
    bsz, width = len(prompts), max(lengths)
    cache_len = width + max_new_tokens
    x = torch.full((bsz, width), pad_id, dtype=torch.long)
    valid = torch.zeros((bsz, cache_len), dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        valid[i, width - len(p):] = True
    x, valid = x.to(device), valid.to(device)
    masks = get_causal_mask_from_padding_mask(valid, target_seq_len=cache_len)
    # each row's positions from 0 at its first token; a stopped row keeps being fed, so its
    # positions are capped within the model's rotary table (its outputs are never used)
    positions = ((valid.cumsum(-1) - 1).clamp(min=0)).clamp(max=model.max_seq_len - 1)
    stops = set(int(t) for t in stop_tokens)
    out: List[List[int]] = [[] for _ in prompts]
    done = [False] * bsz

    with generation_mode(model, batch_size=bsz, dtype=dtype, cache_len=cache_len, device=device):
        logits = model(x, input_pos=positions[:, :width], mask=masks[:, :width])[:, -1]
        for step in range(max_new_tokens):
            tokens = sample(logits, draw_uniform(generator, bsz, device), temperature=temperature, top_k=top_k)
            for i, token in enumerate(tokens.tolist()):
                if not done[i]:
                    out[i].append(token)
                    done[i] = token in stops or len(out[i]) >= budgets[i]
            finished = all(done) if all_done is None else all_done(all(done))
            if finished or step == max_new_tokens - 1:
                break
            col = width + step
            logits = model(tokens.unsqueeze(-1), input_pos=positions[:, col:col + 1],
                           mask=masks[:, col:col + 1])[:, -1]
    return out
