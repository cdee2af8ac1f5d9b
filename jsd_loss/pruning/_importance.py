"""Importance scores and selections from :class:`ActivationStats`.

Width (Minitron, Muralidharan et al. 2024; NVIDIA Model-Optimizer's ``mcore_minitron``):
a unit's score is its mean activation magnitude per sample, aggregated over samples by
the mean or by the L2 norm. Depth: block influence (ShortGPT, Men et al. 2024) scores
layer ``l`` by ``1 - E[cos(h_l, h_{l+1})]``; the angular criterion (Gromov et al. 2024)
drops the contiguous block of ``n`` layers whose input and output are closest in
``E[arccos(cos(h_l, h_{l+n})) / pi]``.
"""

from typing import List

import torch

from jsd_loss.pruning._calibration import ActivationStats

Tensor = torch.Tensor
AGGREGATIONS = ("l2", "mean")


def _aggregate(sums: Tensor, sumsq: Tensor, num_samples: int, aggregation: str) -> Tensor:
    if aggregation == "mean":
        return sums / num_samples
    if aggregation == "l2":
        return sumsq.sqrt()
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def neuron_scores(stats: ActivationStats, aggregation: str = "l2") -> Tensor:
    """[num_layers, intermediate_dim] MLP neuron importance."""
    return _aggregate(stats.neuron_sum, stats.neuron_sumsq, stats.num_samples, aggregation)


def head_scores(stats: ActivationStats, aggregation: str = "l2") -> Tensor:
    """[num_layers, num_heads] attention head importance."""
    return _aggregate(stats.head_sum, stats.head_sumsq, stats.num_samples, aggregation)


def channel_scores(stats: ActivationStats, aggregation: str = "l2") -> Tensor:
    """[embed_dim] residual channel importance (summed over every RMSNorm output)."""
    return _aggregate(stats.channel_sum, stats.channel_sumsq, stats.num_samples, aggregation)


def block_influence(stats: ActivationStats) -> Tensor:
    """[num_layers] ``1 - E[cos(input, output)]`` of each layer over calibration tokens."""
    n = stats.cosine_sum.shape[0] - 1
    idx = torch.arange(n)
    return 1.0 - stats.cosine_sum[idx, idx + 1] / stats.num_tokens


def angular_distance(stats: ActivationStats) -> Tensor:
    """[num_layers + 1, num_layers + 1] mean angular distance between residual boundaries."""
    return stats.angular_sum / stats.num_tokens


def top_indices(scores: Tensor, k: int) -> Tensor:
    """The ``k`` highest-scoring indices in ascending index order (ties: lower index)."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def layers_by_block_influence(stats: ActivationStats, num_layers: int) -> List[int]:
    """Keep the ``num_layers`` layers with the highest block influence."""
    return top_indices(block_influence(stats), num_layers).tolist()


def layers_by_angular_distance(stats: ActivationStats, num_layers: int) -> List[int]:
    """Drop the contiguous block whose ends are closest in angle; keep the rest."""
    total = stats.cosine_sum.shape[0] - 1
    drop = total - num_layers
    if drop == 0:
        return list(range(total))
    distance = angular_distance(stats)
    start = min(range(total - drop + 1), key=lambda s: (float(distance[s, s + drop]), s))
    return [i for i in range(total) if not start <= i < start + drop]


def refit_down_projection(down: Tensor, gram: Tensor, neurons: Tensor, ridge: float = 1e-6) -> Tensor:
    """Least-squares down projection for the kept neurons.

    With ``a`` the full activation and ``A`` the calibration activations, the kept
    columns ``W'`` minimise ``||A_K W'^T - A W^T||^2``: ``W' = W G[:, K] G[K, K]^-1`` for
    the Gram matrix ``G = A^T A``. ``ridge`` (relative to the mean diagonal) keeps the
    solve stable when kept neurons are nearly collinear.

    Args:
        down (Tensor): [embed_dim, intermediate_dim] down-projection weight.
        gram (Tensor): [intermediate_dim, intermediate_dim] ``A^T A``.
        neurons (Tensor): [k] kept neuron indices.
        ridge (float): Tikhonov term relative to ``mean(diag(G[K, K]))``.

    Returns:
        Tensor: [embed_dim, k] refitted weight, in ``down``'s dtype.
    """
    g = gram.double()
    g_kk = g[neurons][:, neurons]
    g_kk = g_kk + ridge * g_kk.diagonal().mean() * torch.eye(len(neurons), dtype=g.dtype)
    rhs = g[neurons] @ down.double().T  # [k, embed_dim]
    return torch.linalg.solve(g_kk, rhs).T.to(down.dtype)
