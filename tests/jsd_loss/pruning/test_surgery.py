"""Pruned models against their teacher with the same units switched off by hooks."""

import torch

from jsd_loss.models.smollm2 import hf_config_to_smollm2_args, smollm2
from jsd_loss.pruning import (
    count_parameters,
    keep_attention_heads,
    keep_hidden_channels,
    keep_layers,
    keep_mlp_neurons,
    kept_heads_per_group,
    pruned_config,
)
from tests.jsd_loss.pruning._tiny import tiny_teacher, tokens, tune_model


def test_removing_mlp_neurons_equals_zeroing_their_activations():
    config, state, _ = tiny_teacher()
    gen = torch.Generator().manual_seed(1)
    kept = [torch.randperm(24, generator=gen)[:10].sort().values for _ in range(3)]
    pruned = state
    for layer, neurons in enumerate(kept):
        pruned = keep_mlp_neurons(pruned, layer, neurons)
    student = tune_model(pruned_config(config, intermediate_size=10), pruned)
    teacher = tune_model(config, state)
    for layer, neurons in enumerate(kept):
        mask = torch.zeros(24, dtype=torch.float64)
        mask[neurons] = 1.0
        teacher.layers[layer].mlp.w2.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,))
    x = tokens()
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=1e-10)


def test_removing_heads_equals_zeroing_their_outputs():
    config, state, _ = tiny_teacher()  # 4 query heads over 2 KV heads, head_dim 8
    x = tokens()
    for heads, kv_heads in (([1, 2], [0, 1]), ([2, 3], [1]), ([0, 3], [0, 1])):
        pruned = state
        for layer in range(3):
            pruned = keep_attention_heads(pruned, layer, heads, kv_heads, head_dim=8)
        shape = dict(num_attention_heads=len(heads), num_key_value_heads=len(kv_heads))
        student = tune_model(pruned_config(config, **shape), pruned)
        teacher = tune_model(config, state)
        mask = torch.zeros(4, 8, dtype=torch.float64)
        mask[heads] = 1.0
        for layer in teacher.layers:
            layer.attn.output_proj.register_forward_pre_hook(lambda m, a: (a[0] * mask.flatten(),))
        torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=1e-10)


def test_dropping_layers_equals_skipping_them():
    config, state, _ = tiny_teacher(num_layers=5)
    kept = [0, 2, 3]
    student = tune_model({**config, "num_hidden_layers": 3}, keep_layers(state, kept))
    teacher = tune_model(config, state)
    for i in (1, 4):
        teacher.layers[i].register_forward_hook(lambda m, a, out: a[0])
    x = tokens()
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=1e-10)


def test_removing_dead_hidden_channels_is_exact():
    # channels 3, 7, 8, 20 are zero in the whole residual stream (no embedding column and no
    # attention or MLP output writes them): removing them is exact once the RMSNorm scales are
    # rescaled for the smaller mean (eps tiny, so the mean is all that differs)
    config, state, _ = tiny_teacher(norm_eps=1e-30)
    dead = [3, 7, 8, 20]
    state = {k: v.clone() for k, v in state.items()}
    state["model.embed_tokens.weight"][:, dead] = 0.0
    for key in state:
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            state[key][dead] = 0.0
    keep = torch.tensor([c for c in range(32) if c not in dead])
    student = tune_model(pruned_config(config, hidden_size=28), keep_hidden_channels(state, keep))
    teacher = tune_model(config, state)
    x = tokens()
    # torchtune's RMSNorm computes in float32 even for float64 weights: float32 rounding
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=1e-6)


def test_parameter_count_matches_built_model():
    config, _, _ = tiny_teacher()
    for shape in ({}, {"intermediate_size": 7}, {"num_attention_heads": 2, "hidden_size": 30},
                  {"num_hidden_layers": 1, "num_key_value_heads": 1, "num_attention_heads": 2}):
        cfg = pruned_config(config, **shape)
        built = smollm2(**hf_config_to_smollm2_args(cfg))
        assert count_parameters(cfg) == sum(p.numel() for p in built.parameters()), shape


def test_heads_kept_per_group_follow_scores():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])  # 6 heads over 2 KV heads
    assert kept_heads_per_group(6, 2, scores, 2) == [1, 2, 3, 5]
    assert kept_heads_per_group(6, 2, scores, 3) == [0, 1, 2, 3, 4, 5]
