"""Activation statistics of a torchtune decoder over calibration text, for pruning scores.

One pass of forward hooks collects everything any pruning method needs:

- per MLP neuron: the mean |activation| at the input of the down projection
  (``silu(w1 x) * w3 x``), Minitron's neuron importance, per sample;
- per attention head: the mean L2 norm of the head's output at the input of the output
  projection, per sample;
- per residual channel: the mean |value| at the outputs of every RMSNorm, summed over
  the norms (Minitron's embedding-channel importance), per sample;
- between every pair of residual-stream boundaries ``h_i`` and ``h_j`` (``h_0`` the
  embeddings, ``h_l`` the output of layer ``l - 1``): the token sums of the cosine
  similarity and of the angular distance ``arccos(cos) / pi`` (block influence and
  Gromov et al.'s contiguous-block distance both derive from these);
- optionally, per layer, the token sum of ``a a^T`` for the MLP activations ``a``: the
  Gram matrix a least-squares refit of the down projection needs.

Per-sample means are summed and squared-summed over samples, so a score can aggregate
over the batch as a mean or as an L2 norm. Padding never counts.
"""

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from jsd_loss.metrics import final_hidden_states

Tensor = torch.Tensor


@dataclass
class ActivationStats:
    """Sums over calibration samples (``*_sum``, ``*_sumsq`` of per-sample means) and tokens."""

    neuron_sum: Tensor  # [num_layers, intermediate_dim]
    neuron_sumsq: Tensor
    head_sum: Tensor  # [num_layers, num_heads]
    head_sumsq: Tensor
    channel_sum: Tensor  # [embed_dim]
    channel_sumsq: Tensor
    cosine_sum: Tensor  # [num_layers + 1, num_layers + 1]
    angular_sum: Tensor
    mlp_gram: Optional[Tensor] = None  # [num_layers, intermediate_dim, intermediate_dim], float64
    num_samples: int = 0
    num_tokens: int = 0
    extra: Dict[str, float] = field(default_factory=dict)


def sample_calibration_rows(rows: Sequence[dict], num_rows: int, seed: int) -> List[dict]:
    """``num_rows`` rows drawn without replacement by a seeded shuffle, in drawn order."""
    if num_rows < 1:
        raise ValueError(f"calibration needs at least 1 row, got {num_rows}")
    if num_rows > len(rows):
        raise ValueError(f"asked for {num_rows} calibration rows but the split has only {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:num_rows]]


def length_sorted_batches(
    samples: Sequence[List[int]], batch_size: int, pad_id: int
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Right-padded ``(tokens, mask)`` batches ([b, s] each) of similar-length samples."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(map(len, chunk))
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, sample in enumerate(chunk):
            tokens[row, : len(sample)] = torch.tensor(sample)
            mask[row, : len(sample)] = True
        yield tokens, mask


def _per_sample_mean(values: Tensor, mask: Tensor) -> Tensor:
    """[b, s, n] values, [b, s] mask -> [b, n] means over each sample's real tokens."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1)


class _Collector:
    def __init__(self, model: nn.Module, with_gram: bool):
        layers = model.layers
        first = layers[0]
        n, f = len(layers), first.mlp.w2.in_features
        h, d = first.attn.num_heads, model.tok_embeddings.embedding_dim
        z = torch.zeros
        self.stats = ActivationStats(
            neuron_sum=z(n, f, dtype=torch.float64), neuron_sumsq=z(n, f, dtype=torch.float64),
            head_sum=z(n, h, dtype=torch.float64), head_sumsq=z(n, h, dtype=torch.float64),
            channel_sum=z(d, dtype=torch.float64), channel_sumsq=z(d, dtype=torch.float64),
            cosine_sum=z(n + 1, n + 1, dtype=torch.float64), angular_sum=z(n + 1, n + 1, dtype=torch.float64),
            mlp_gram=z(n, f, f, dtype=torch.float64) if with_gram else None,
        )
        self.mask: Optional[Tensor] = None
        self.boundaries: List[Tensor] = []
        self.channel_batch: Optional[Tensor] = None

    def _add(self, sums: Tensor, sumsq: Tensor, per_sample: Tensor) -> None:
        per_sample = per_sample.double()
        sums += per_sample.sum(0)
        sumsq += (per_sample**2).sum(0)

    def down_proj_input(self, layer: int):
        def hook(module, args):
            a = args[0].detach()
            s = self.stats
            self._add(s.neuron_sum[layer], s.neuron_sumsq[layer], _per_sample_mean(a.abs(), self.mask))
            if s.mlp_gram is not None:
                real = a[self.mask].float()
                s.mlp_gram[layer] += (real.T @ real).double()

        return hook

    def output_proj_input(self, layer: int, num_heads: int):
        def hook(module, args):
            a = args[0].detach()
            b, seq, _ = a.shape
            norms = a.reshape(b, seq, num_heads, -1).norm(dim=-1)
            s = self.stats
            self._add(s.head_sum[layer], s.head_sumsq[layer], _per_sample_mean(norms, self.mask))

        return hook

    def norm_output(self, module, args, output):
        per_sample = _per_sample_mean(output.detach().abs(), self.mask)
        self.channel_batch = per_sample if self.channel_batch is None else self.channel_batch + per_sample

    def boundary(self, module, args, output):
        self.boundaries.append(output.detach())

    def end_batch(self) -> None:
        s = self.stats
        self._add(s.channel_sum, s.channel_sumsq, self.channel_batch)
        self.channel_batch = None
        # float64: arccos is steep near cos = 1, where float32 rounding alone reads as ~1e-4 of angle
        states = torch.stack([h[self.mask] for h in self.boundaries], dim=1).double()  # [t, n + 1, d]
        unit = states / states.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = torch.einsum("tid,tjd->tij", unit, unit).clamp(-1.0, 1.0)
        s.cosine_sum += cos.sum(0).double()
        s.angular_sum += (torch.arccos(cos) / torch.pi).sum(0).double()
        s.num_samples += int(self.mask.shape[0])
        s.num_tokens += int(self.mask.sum())
        self.boundaries = []


@contextmanager
def _hooks(model: nn.Module, collector: _Collector):
    handles = [model.tok_embeddings.register_forward_hook(collector.boundary)]
    for i, layer in enumerate(model.layers):
        handles += [
            layer.register_forward_hook(collector.boundary),
            layer.mlp.w2.register_forward_pre_hook(collector.down_proj_input(i)),
            layer.attn.output_proj.register_forward_pre_hook(collector.output_proj_input(i, layer.attn.num_heads)),
            layer.sa_norm.register_forward_hook(collector.norm_output),
            layer.mlp_norm.register_forward_hook(collector.norm_output),
        ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect_activation_stats(
    model: nn.Module,
    samples: Sequence[List[int]],
    pad_id: int,
    batch_size: int = 8,
    with_gram: bool = False,
    progress: bool = False,
) -> ActivationStats:
    """Run ``model`` (a torchtune ``TransformerDecoder``) over token lists and collect
    :class:`ActivationStats`. Samples are batched by length; padding is excluded."""
    from tqdm import tqdm

    if not samples:
        raise ValueError("no calibration samples")
    collector = _Collector(model, with_gram)
    batches = list(length_sorted_batches(samples, batch_size, pad_id))
    model.eval()
    with _hooks(model, collector):
        for tokens, mask in tqdm(batches, desc="calibration", disable=not progress):
            collector.mask = mask
            # the final norm's output, without the output projection (a fifth of the forward)
            collector.norm_output(None, None, final_hidden_states(model, tokens))
            collector.end_batch()
    return collector.stats
