"""KV-cache generation against a plain loop that recomputes every row alone, unpadded, from
scratch at each step; sampling against the softmax it draws from."""

import pytest
import torch

from jsd_loss.generation import draw_uniform, generate, sample
from jsd_loss.models.smollm2 import lora_smollm2, smollm2
from tests.conftest import TINY

CPU = torch.device("cpu")
# a 64-token vocabulary, so that stop tokens come up within a few steps
SMALL = {**TINY, "vocab_size": 64, "max_seq_len": 64}
STOPS = [3, 7, 11, 40]


def _model(lora=False, seed=0):
    torch.manual_seed(seed)
    if lora:
        m = lora_smollm2(lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8,
                         lora_dropout=0.5, **SMALL)
        for n, p in m.named_parameters():  # non-zero adapters, so they change the logits
            if "lora_b" in n:
                torch.nn.init.normal_(p, std=0.5)
    else:
        m = smollm2(**SMALL)
    for p in m.parameters():  # peaked distributions: sampling is not near-uniform
        p.data.mul_(3.0)
    return m


@torch.no_grad()
def _recompute(model, prompts, *, max_new_tokens, budgets, seed, temperature, top_k):
    """Each row alone, its whole sequence through the model at every step; one uniform per
    row per step, as generate draws them."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out, done = [[] for _ in prompts], [False] * len(prompts)
    for _ in range(max_new_tokens):
        u = torch.rand(len(prompts), generator=g, dtype=torch.float64)
        for i, p in enumerate(prompts):
            if done[i]:
                continue
            logits = model(torch.tensor([list(p) + out[i]]))[:, -1]
            token = int(sample(logits, u[i:i + 1], temperature=temperature, top_k=top_k))
            out[i].append(token)
            done[i] = token in STOPS or len(out[i]) >= budgets[i]
        if all(done):
            break
    return out


PROMPTS = [[5, 9, 2, 17, 33, 8, 1], [12, 4], [60, 61, 62, 1, 2]]


@pytest.mark.parametrize("lora,temperature,top_k", [(False, 1.0, None), (False, 0.7, 5), (True, 1.3, None),
                                                    (False, 0.0, None)])
def test_kv_cache_generation_equals_recomputing_each_row_alone(lora, temperature, top_k):
    model = _model(lora)
    model.train()  # generate must switch to eval (LoRA dropout) and back
    budgets = [12, 5, 12]
    got = generate(model, PROMPTS, max_new_tokens=12, budgets=budgets, stop_tokens=STOPS,
                   generator=torch.Generator().manual_seed(3), dtype=torch.float32, device=CPU,
                   temperature=temperature, top_k=top_k)
    assert model.training and not model.caches_are_setup() and model.num_output_chunks == 0
    ref = _recompute(model, PROMPTS, max_new_tokens=12, budgets=budgets, seed=3, temperature=temperature, top_k=top_k)
    assert got == ref
    assert len(got[1]) <= 5 and all(1 <= len(r) <= 12 for r in got)
    # every row ends at a stop token or at its budget, and has no stop token before its end
    for r, b in zip(got, budgets):
        assert all(t not in STOPS for t in r[:-1]) and (r[-1] in STOPS or len(r) == b)
    if temperature:
        assert any(r[-1] in STOPS for r in got) and any(len(r) > 1 for r in got)


def test_generation_is_reproducible_from_the_generator_state_and_leaves_training_intact():
    model = _model()
    model.set_num_output_chunks(2)
    x = torch.tensor([PROMPTS[0]])
    before = model(x)
    g = torch.Generator().manual_seed(0)
    g.manual_seed(11)
    state = g.get_state()
    kw = dict(max_new_tokens=10, stop_tokens=STOPS, dtype=torch.float32, device=CPU)
    first = generate(model, PROMPTS, generator=g, **kw)
    second = generate(model, PROMPTS, generator=g, **kw)
    g.set_state(state)
    assert generate(model, PROMPTS, generator=g, **kw) == first != second
    after = model(x)  # chunked output again, no cache, same values
    assert isinstance(after, list) and len(after) == 2
    assert torch.equal(torch.cat(after, 1), torch.cat(before, 1))


def test_sampling_follows_the_tempered_top_k_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    g = torch.Generator().manual_seed(0)
    n = 40_000
    u = draw_uniform(g, n, CPU)
    for temperature, top_k in [(1.0, None), (0.5, None), (2.0, 3)]:
        draws = sample(logits.expand(n, -1), u, temperature=temperature, top_k=top_k)
        z = logits[0] / temperature
        if top_k:
            z = torch.where(z >= z.topk(top_k).values[-1], z, torch.tensor(float("-inf")))
        expected = torch.softmax(z, -1)
        freq = torch.bincount(draws, minlength=5).double() / n
        assert torch.allclose(freq, expected.double(), atol=0.01), (temperature, top_k, freq, expected)
        assert freq[4] == 0 and (top_k is None or freq[3] == 0)
    assert sample(logits, torch.tensor([0.99]), temperature=0.0).item() == 0
    assert sample(logits, torch.tensor([0.99]), top_k=1).item() == 0


def test_bad_arguments_are_refused():
    model = _model()
    kw = dict(stop_tokens=STOPS, generator=torch.Generator(), dtype=torch.float32, device=CPU)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, PROMPTS, max_new_tokens=0, **kw)
    with pytest.raises(ValueError, match="budgets must give"):
        generate(model, PROMPTS, max_new_tokens=4, budgets=[1, 5, 1], **kw)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="temperature must be"):
        generate(model, PROMPTS, max_new_tokens=4, temperature=-1.0, **kw)
    with pytest.raises(ValueError, match="top_k must be"):
        generate(model, PROMPTS, max_new_tokens=4, top_k=0, **kw)


def test_all_done_keeps_every_process_stepping_until_all_have_stopped():
    """A process whose rows have stopped keeps taking steps (its forwards are collectives under
    FSDP) while ``all_done`` says another has not; its rows' tokens are unchanged by that."""
    model = _model()
    kw = dict(max_new_tokens=12, stop_tokens=STOPS, dtype=torch.float32, device=CPU, budgets=[3, 2, 1])
    alone = generate(model, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    calls = []

    def others_need_eight_steps(done):
        calls.append(done)
        return done and len(calls) >= 8

    synced = generate(model, PROMPTS, generator=torch.Generator().manual_seed(5), all_done=others_need_eight_steps, **kw)
    assert synced == alone and [len(r) for r in alone] == [len(r) for r in synced]
    assert len(calls) == 8 and calls[2:] == [True] * 6  # locally done after 3 steps, 8 taken
