"""Scores on hand-built tiny models whose ranking is known, and the least-squares refit
against torch.linalg.lstsq."""

import torch

from jsd_loss.pruning import (
    block_influence,
    collect_activation_stats,
    head_scores,
    layers_by_angular_distance,
    layers_by_block_influence,
    neuron_scores,
    refit_down_projection,
    top_indices,
)
from tests.jsd_loss.pruning._tiny import tiny_teacher, tune_model

SAMPLES = [torch.randint(0, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (6, 11, 4, 9)]


def _stats(config, state, **kwargs):
    return collect_activation_stats(tune_model(config, state), SAMPLES, pad_id=0, batch_size=2, **kwargs)


def test_neuron_scores_follow_a_known_scale():
    # every neuron of a layer is the same neuron times s_k (up_proj row scaled by s_k), so its
    # activation is s_k times neuron 0's: scores are proportional to s for either aggregation
    config, state, _ = tiny_teacher()
    scale = torch.rand(24, generator=torch.Generator().manual_seed(0)) + 0.1
    for layer in range(3):
        p = f"model.layers.{layer}.mlp."
        state[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][:1].repeat(24, 1)
        state[p + "up_proj.weight"] = state[p + "up_proj.weight"][:1] * scale[:, None]
    stats = _stats(config, state)
    for aggregation in ("l2", "mean"):
        scores = neuron_scores(stats, aggregation)
        for layer in range(3):
            torch.testing.assert_close(scores[layer] / scores[layer, 0], (scale / scale[0]).double(), rtol=1e-5, atol=0)
            assert top_indices(scores[layer], 5).tolist() == sorted(torch.topk(scale, 5).indices.tolist())


def test_head_scores_follow_a_known_scale():
    # one KV head per query head, identical q/k/v rows per head except v scaled by s_h: the
    # attention pattern is shared and each head's output is s_h times head 0's
    config, state, _ = tiny_teacher(num_kv_heads=4)
    scale = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for layer in range(3):
        p = f"model.layers.{layer}.self_attn."
        for name in ("q_proj", "k_proj", "v_proj"):
            w = state[p + name + ".weight"]
            state[p + name + ".weight"] = w[:8].repeat(4, 1)
        state[p + "v_proj.weight"] = state[p + "v_proj.weight"] * scale.repeat_interleave(8)[:, None]
    scores = head_scores(_stats(config, state))
    for layer in range(3):
        torch.testing.assert_close(scores[layer] / scores[layer, 0], (scale / scale[0]).double(), rtol=1e-5, atol=0)


def _identity_layers(state, layers):
    state = dict(state)
    for layer in layers:  # nothing written to the residual stream: the layer is the identity
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            state[f"model.layers.{layer}.{name}"] = torch.zeros_like(state[f"model.layers.{layer}.{name}"])
    return state


def test_block_influence_drops_identity_layers():
    config, state, _ = tiny_teacher(num_layers=5)
    stats = _stats(config, _identity_layers(state, [1, 3]))
    influence = block_influence(stats)
    assert influence[1].abs() < 1e-12 and influence[3].abs() < 1e-12
    assert (influence[[0, 2, 4]] > 1e-4).all()
    assert layers_by_block_influence(stats, 3) == [0, 2, 4]


def test_angular_distance_drops_the_identity_block():
    config, state, _ = tiny_teacher(num_layers=6)
    stats = _stats(config, _identity_layers(state, [2, 3, 4]))
    assert layers_by_angular_distance(stats, 3) == [0, 1, 5]
    assert layers_by_angular_distance(stats, 4) == [0, 1, 4, 5]  # first of the equal (zero) blocks
    assert layers_by_angular_distance(stats, 6) == list(range(6))


def test_refit_matches_lstsq():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(200, 16, dtype=torch.float64, generator=gen) @ torch.randn(16, 16, dtype=torch.float64, generator=gen)
    down = torch.randn(6, 16, dtype=torch.float64, generator=gen)
    keep = torch.tensor([0, 2, 3, 7, 11, 12, 15])
    refit = refit_down_projection(down, acts.T @ acts, keep, ridge=0.0)
    expected = torch.linalg.lstsq(acts[:, keep], acts @ down.T).solution.T
    torch.testing.assert_close(refit, expected, rtol=1e-8, atol=1e-10)
    # and it is no worse than keeping the old columns
    err = lambda w: ((acts[:, keep] @ w.T - acts @ down.T) ** 2).sum()
    assert err(refit) < err(down[:, keep])
