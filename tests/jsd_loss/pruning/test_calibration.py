"""Batched, padded calibration statistics against a per-sample float64 reference computed
with hooks on transformers' own Llama (a different implementation, no padding)."""

import torch

from jsd_loss.pruning import collect_activation_stats, sample_calibration_rows
from tests.jsd_loss.pruning._tiny import tiny_teacher, tune_model


def _reference(hf, samples):
    hf = hf.double()
    n_layers, f = len(hf.model.layers), hf.config.intermediate_size
    heads, d = hf.config.num_attention_heads, hf.config.hidden_size
    neuron, head = torch.zeros(n_layers, f, dtype=torch.float64), torch.zeros(n_layers, heads, dtype=torch.float64)
    neuron_sq = torch.zeros_like(neuron)
    channel, cos_sum = torch.zeros(d, dtype=torch.float64), torch.zeros(n_layers + 1, n_layers + 1, dtype=torch.float64)
    ang_sum, gram = torch.zeros_like(cos_sum), torch.zeros(n_layers, f, f, dtype=torch.float64)
    for sample in samples:
        seen = {"down": [], "o": [], "norm": [], "h": []}
        hooks = [hf.model.embed_tokens.register_forward_hook(lambda m, a, o: seen["h"].append(o[0])),
                 hf.model.norm.register_forward_hook(lambda m, a, o: seen["norm"].append(o[0]))]
        for layer in hf.model.layers:
            hooks += [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen["down"].append(a[0][0])),
                      layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen["o"].append(a[0][0])),
                      layer.input_layernorm.register_forward_hook(lambda m, a, o: seen["norm"].append(o[0])),
                      layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen["norm"].append(o[0])),
                      layer.register_forward_hook(
                          lambda m, a, o: seen["h"].append((o[0] if isinstance(o, tuple) else o)[0]))]
        with torch.no_grad():
            hf(torch.tensor([sample]))
        for h in hooks:
            h.remove()
        for i, a in enumerate(seen["down"]):
            neuron[i] += a.abs().mean(0)
            neuron_sq[i] += a.abs().mean(0) ** 2
            gram[i] += a.T @ a
        for i, a in enumerate(seen["o"]):
            head[i] += a.view(len(sample), heads, -1).norm(dim=-1).mean(0)
        channel += sum(x.abs().mean(0) for x in seen["norm"])
        states = torch.stack(seen["h"], 1)  # [t, n + 1, d]
        for i in range(n_layers + 1):
            for j in range(n_layers + 1):
                cos = torch.nn.functional.cosine_similarity(states[:, i], states[:, j], dim=-1).clamp(-1, 1)
                cos_sum[i, j] += cos.sum()
                ang_sum[i, j] += (torch.arccos(cos) / torch.pi).sum()
    return dict(neuron_sum=neuron, neuron_sumsq=neuron_sq, head_sum=head, channel_sum=channel,
                cosine_sum=cos_sum, angular_sum=ang_sum, mlp_gram=gram)


def test_stats_match_per_sample_transformers_reference():
    config, state, hf = tiny_teacher()
    gen = torch.Generator().manual_seed(3)
    samples = [torch.randint(0, 128, (int(n),), generator=gen).tolist() for n in (5, 9, 2, 13, 7, 9, 1)]
    ours = collect_activation_stats(tune_model(config, state), samples, pad_id=0, batch_size=3, with_gram=True)
    reference = _reference(hf, samples)
    assert ours.num_samples == 7 and ours.num_tokens == sum(map(len, samples))
    for name, expected in reference.items():
        torch.testing.assert_close(getattr(ours, name), expected, rtol=1e-4, atol=1e-5, msg=name)


def test_calibration_rows_are_seeded_and_refuse_bad_counts():
    rows = [{"i": i} for i in range(50)]
    a, b = sample_calibration_rows(rows, 10, seed=0), sample_calibration_rows(rows, 10, seed=0)
    assert a == b and len({r["i"] for r in a}) == 10
    assert a != sample_calibration_rows(rows, 10, seed=1)
    for bad in (0, 51):
        try:
            sample_calibration_rows(rows, bad, seed=0)
        except ValueError as e:
            assert "calibration" in str(e)
        else:
            raise AssertionError(f"{bad} rows accepted")
