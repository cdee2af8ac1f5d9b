"""Several teachers as one: the fused teacher distribution, given as logits that any loss
form takes in place of one teacher's.

Three fusions of teachers ``i`` with normalised weights ``w_i`` at the loss's temperature ``T``:

- ``mixture``: ``P = sum_i w_i softmax(z_i / T)``, given as the logits ``T * log P`` (so the
  loss's ``softmax(logits / T)`` is ``P``);
- ``product``: the renormalised weighted geometric mean of the tempered distributions,
  ``P ∝ prod_i softmax(z_i / T) ** w_i = softmax(sum_i w_i z_i / T)``, given as ``sum_i w_i z_i``
  (independent of ``T``);
- ``min_ce`` (after FuseLLM): per sequence, the logits of the teacher whose cross-entropy on
  the sequence's labels (temperature 1, summed over its non-ignored tokens, which for one
  sequence picks the same teacher as the mean) is the lowest; ties, and a sequence with no
  label, go to the first teacher; a NaN cross-entropy never wins. The weights are unused.

The fusion runs in float32 (float64 for float64 logits) whatever the teachers' dtype. One
teacher is returned unchanged in every mode, so a one-teacher list is the single teacher.
Pure torch; :mod:`jsd_loss.losses._fused_teachers` gives the fused-linear form the same
fusion a chunk of tokens at a time.
"""

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from jsd_loss.losses._functional import _math_dtype

FUSIONS = ("mixture", "product", "min_ce")

Logits = Union[torch.Tensor, List[torch.Tensor]]  # (..., T, V), or its chunks along T


def check_fusion(fusion: str, weights: Sequence[float]) -> Tuple[float, ...]:
    """The weights normalised to sum to 1, once ``fusion`` is one of :data:`FUSIONS` and every
    weight is a finite positive number.

    Raises:
        ValueError: naming the fusion or the weights.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"teacher fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    weights = [float(w) for w in weights]
    if not weights:
        raise ValueError("fusing teachers needs at least one teacher")
    if not all(w > 0.0 and math.isfinite(w) for w in weights):
        raise ValueError(f"teacher weights must be finite positive numbers, got {weights}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def token_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy at temperature 1 of each token, 0 where the label is ``ignore_index``.

    Args:
        logits (torch.Tensor): (..., V).
        labels (torch.Tensor): (...,).

    Returns:
        torch.Tensor: (...,) in the math dtype (float32, float64 for float64 logits).
    """
    keep = labels != ignore_index
    log_z = torch.logsumexp(logits.to(_math_dtype(logits)), dim=-1)
    picked = logits.gather(-1, labels.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1).to(log_z.dtype)
    return (log_z - picked).masked_fill_(~keep, 0.0)


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """:func:`token_ce` summed over each sequence: logits (..., T, V), labels (..., T) -> (...,)."""
    return token_ce(logits, labels, ignore_index).sum(-1)


def better_ce(ce: torch.Tensor, best: Optional[torch.Tensor]) -> torch.Tensor:
    """Where the cross-entropies ``ce`` of a later teacher beat ``best`` (strictly: ties stay
    with the earlier teacher; NaN never wins). The first teacher (``best`` None) wins everywhere."""
    if best is None:
        return torch.ones_like(ce, dtype=torch.bool)
    return ce.nan_to_num(nan=math.inf) < best.nan_to_num(nan=math.inf)


def fuse_logits(
    logits: Iterable[Logits],
    weights: Sequence[float],
    fusion: str = "mixture",
    temperature: float = 1.0,
    labels: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
) -> Logits:
    """
    The fused teacher's logits, from each teacher's logits in turn (an iterable is consumed
    one teacher at a time, so at most the running result and one teacher's logits are held).

    Args:
        logits (Iterable[Logits]): each teacher's logits, (..., T, V), or their chunks along
            T (a list, the same sizes for every teacher), in the order of ``weights``.
        weights (Sequence[float]): one positive weight per teacher (normalised here).
        fusion (str): ``mixture``, ``product`` or ``min_ce`` (see the module). Default: mixture
        temperature (float): the loss's temperature (``mixture`` depends on it). Default: 1.0
        labels (Optional[torch.Tensor]): (..., T), needed by ``min_ce``. Default: None
        ignore_index (int): label value of tokens without a label. Default: -100

    Returns:
        Logits: (..., T, V) (chunks when chunks were given) in the math dtype; one teacher's
        logits unchanged.
    """
    weights = check_fusion(fusion, weights)
    if fusion == "min_ce" and labels is None:
        raise ValueError("min_ce fusion needs the labels (the reference tokens)")
    fused, best, count, whole = None, None, 0, True
    for i, z in enumerate(logits):
        count += 1
        if len(weights) == 1:
            fused = z
            continue
        whole = isinstance(z, torch.Tensor)
        chunks = [z] if whole else list(z)
        dtype = _math_dtype(chunks[0])
        if fusion == "mixture":
            log_w = math.log(weights[i]) if i < len(weights) else 0.0
            terms = [F.log_softmax(c.to(dtype) / temperature, dim=-1) + log_w for c in chunks]
            fused = terms if fused is None else [torch.logaddexp(a, t) for a, t in zip(fused, terms)]
        elif fusion == "product":
            w = weights[i] if i < len(weights) else 0.0
            terms = [c.to(dtype) * w for c in chunks]
            fused = terms if fused is None else [a.add_(t) for a, t in zip(fused, terms)]
        else:
            parts = labels.split([c.size(-2) for c in chunks], dim=-1)
            ce = sum(sequence_ce(c, y, ignore_index) for c, y in zip(chunks, parts))
            won = better_ce(ce, best)
            best = ce if best is None else torch.where(won, ce, best)
            if fused is None:
                fused = [c.to(dtype) for c in chunks]
            else:
                fused = [torch.where(won[..., None, None], c.to(dtype), a) for a, c in zip(fused, chunks)]
        del z, chunks
    if count != len(weights):
        raise ValueError(f"got the logits of {count} teachers for {len(weights)} weights")
    if len(weights) == 1:
        return fused
    if fusion == "mixture":
        fused = [a * temperature for a in fused]
    return fused[0] if whole else fused
