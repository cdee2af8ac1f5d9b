"""Several teachers for the fused-linear losses: their final hidden states and output weights,
fused (:mod:`jsd_loss.losses._fusion`) one chunk of tokens at a time, so that no teacher's
``(tokens, vocab)`` logits ever exist. It takes the place of ``teacher_hidden`` (with
``teacher_weight=None``), as a :class:`~jsd_loss.losses.TopKDistribution` does."""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from jsd_loss.losses._fusion import better_ce, check_fusion, fuse_logits, token_ce


@dataclass(frozen=True)
class FusedTeachers:
    """
    Args:
        hidden (Sequence[torch.Tensor]): each teacher's final hidden states, (B, T, D_i) or
            (N, D_i), constants; the widths ``D_i`` may differ.
        weight (Sequence[torch.Tensor]): each teacher's output projection as
            ``nn.Linear.weight``, (V, D_i): one vocabulary ``V`` for all.
        weights (Sequence[float]): one positive weight per teacher (normalised here).
        fusion (str): ``mixture``, ``product`` or ``min_ce``. Default: mixture
        choice (Optional[torch.Tensor]): (N,) the teacher of each flattened token, ``min_ce``
            only; set by :meth:`for_tokens`. Default: None
    """

    hidden: Tuple[torch.Tensor, ...]
    weight: Tuple[torch.Tensor, ...]
    weights: Tuple[float, ...]
    fusion: str = "mixture"
    choice: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", check_fusion(self.fusion, self.weights))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "weight", tuple(self.weight))
        if not len(self.hidden) == len(self.weight) == len(self.weights):
            raise ValueError(f"{len(self.hidden)} teachers' hidden states, {len(self.weight)} output weights "
                             f"and {len(self.weights)} weights: one of each per teacher")

    def for_tokens(
        self, labels: torch.Tensor, ignore_index: int, vocab_size: int, chunk_size: int,
        matmul_dtype: Optional[torch.dtype] = None,
    ) -> "FusedTeachers":
        """The teachers for the flattened tokens of ``labels``: hidden states (N, D_i), output
        weights cast once to ``matmul_dtype`` (None: each its own), and for ``min_ce`` each
        token's teacher, the one of lowest cross-entropy on its sequence (a row of ``labels``,
        (B, T); (N,) is one sequence), computed ``chunk_size`` tokens at a time.

        Raises:
            ValueError: for a vocabulary other than ``vocab_size``, hidden states that do not
                fit their weight, or token counts that differ from the labels'.
        """
        hidden = tuple(h.detach().reshape(-1, h.size(-1)) for h in self.hidden)
        weight = tuple(w.detach().to(matmul_dtype or w.dtype) for w in self.weight)
        for i, (h, w) in enumerate(zip(hidden, weight)):
            if w.size(0) != vocab_size:
                raise ValueError(f"teacher {i} has vocab size {w.size(0)}, the student {vocab_size}")
            if h.size(-1) != w.size(1):
                raise ValueError(f"teacher {i}'s hidden dim {h.size(-1)} does not match its output weight "
                                 f"of shape {tuple(w.shape)}")
            if h.size(0) != labels.numel():
                raise ValueError(f"token counts differ: teacher {i} {h.size(0)}, labels {labels.numel()}")
        choice = None
        if self.fusion == "min_ce" and len(hidden) > 1:
            choice = _min_ce_choice(hidden, weight, labels, ignore_index, chunk_size)
        return FusedTeachers(hidden, weight, self.weights, self.fusion, choice)

    def logits(self, rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """The fused teacher logits of the flattened tokens ``rows`` (indices, (n,)), (n, V),
        in the math dtype (one teacher: its own logits in its matmul dtype); call on the result
        of :meth:`for_tokens`. Each teacher's logits exist for these rows only."""
        def teacher_logits(i: int, sel: torch.Tensor) -> torch.Tensor:
            w = self.weight[i]
            return self.hidden[i][sel].to(w.dtype) @ w.t()

        if len(self.hidden) == 1:
            return teacher_logits(0, rows)
        if self.fusion != "min_ce":
            return fuse_logits((teacher_logits(i, rows) for i in range(len(self.hidden))), self.weights,
                               self.fusion, temperature)
        dtype = torch.float64 if self.hidden[0].dtype == torch.float64 else torch.float32
        out = torch.empty(rows.numel(), self.weight[0].size(0), dtype=dtype, device=rows.device)
        who = self.choice[rows]
        for i in range(len(self.hidden)):
            pos = (who == i).nonzero().squeeze(-1)
            if pos.numel():
                out[pos] = teacher_logits(i, rows[pos]).to(dtype)
        return out


def _min_ce_choice(
    hidden: Sequence[torch.Tensor], weight: Sequence[torch.Tensor], labels: torch.Tensor, ignore_index: int,
    chunk_size: int,
) -> torch.Tensor:
    """(N,) the teacher of each flattened token: per row of ``labels`` the lowest summed CE
    (ties and rows without labels: the first teacher), without a (tokens, vocab) tensor."""
    seq_len = labels.size(-1) if labels.dim() > 1 else labels.numel()
    flat = labels.reshape(-1)
    n_seq = flat.numel() // max(seq_len, 1)
    keep = (flat != ignore_index).nonzero().squeeze(-1)
    dtype = torch.float64 if hidden[0].dtype == torch.float64 else torch.float32
    best, picked = None, torch.zeros(n_seq, dtype=torch.long, device=flat.device)
    for i, (h, w) in enumerate(zip(hidden, weight)):
        ce = torch.zeros(n_seq, dtype=dtype, device=flat.device)
        for start in range(0, keep.numel(), chunk_size):
            idx = keep[start : start + chunk_size]
            ce.index_add_(0, idx // seq_len, token_ce(h[idx].to(w.dtype) @ w.t(), flat[idx]).to(dtype))
        won = better_ce(ce, best)
        best = ce if best is None else torch.where(won, ce, best)
        picked[won] = i
    return picked.repeat_interleave(seq_len)
