"""A sparse teacher: its top-k tokens plus one tail bucket holding the remaining mass.

An offline teacher cache keeps, per response token, the teacher's ``k`` most probable
token ids, their log-probabilities under the *full* softmax, and the log of the mass
left over (the tail). The divergences in :mod:`jsd_loss.losses._topk_divergence` compare
teacher and student as distributions over ``k + 1`` buckets: the ``k`` cached tokens,
each a bucket of its own, and one bucket for every other token of the vocabulary. The
student's bucket masses come from its full logits, so its tail mass is exact.

What the tail bucket does to the bias against the dense loss: bucketing is the same
deterministic map (a coarse-graining) applied to both distributions, and every
divergence of the package (the generalized JSD for any ``beta``, both KLs) is an
f-divergence, so by the data-processing inequality the bucketed divergence is a lower
bound of the dense one, ``D(P_t^bucket || P_s^bucket) <= D(P_t || P_s)``. It equals the
dense value when the student's tail is proportional to the teacher's (``q_v / p_v``
constant over the tail tokens), so the bias is the mismatch of the two *shapes* inside
the tail only, and it shrinks as the tail mass does. Consistently, the gradient gives the
student no signal about how to spread its tail mass: within the tail it moves every
logit in proportion to ``q_v``, adjusting only the total. Plain top-k truncation
(dropping the tail, or renormalising over the k tokens) is not such a map applied to
both distributions and has no such guarantee: its value can lie above or below the
dense one, and it ignores how much mass the student leaves outside the k tokens.

Temperature: a :class:`TopKDistribution` is already at the temperature the loss uses
(:func:`topk_from_logits` applies it; a cache records it). A loss therefore tempers the
student logits only (``logits / T``) and scales by ``T ** 2`` as the dense losses do.
"""

import math
from typing import List, NamedTuple, Sequence, Union

import torch

from jsd_loss.losses._functional import _math_dtype


class TopKDistribution(NamedTuple):
    """A distribution kept as its k most probable tokens plus one tail bucket.

    The token dims ``(...)`` are the leading dims of every field: ``(N,)`` or ``(B, T)``.
    Tuple unpacking works (``ids, log_probs, tail = dist``); rows are taken with
    :meth:`select`, not with ``[]`` (which indexes the tuple's fields).
    """

    ids: torch.Tensor  # (..., k) int64 token ids (distinct within a row)
    log_probs: torch.Tensor  # (..., k) float32 log-probabilities of those tokens under the full softmax
    tail_log_mass: torch.Tensor  # (...,) float32 log of the remaining mass; -inf (or very negative) when the k tokens hold it all

    @property
    def k(self) -> int:
        """Number of cached tokens per row."""
        return self.ids.size(-1)

    @property
    def shape(self) -> torch.Size:
        """The token dims, e.g. ``(B, T)`` or ``(N,)``."""
        return self.tail_log_mass.shape

    def flatten(self) -> "TopKDistribution":
        """The token dims flattened into one: fields of shape (N, k), (N, k), (N,)."""
        return TopKDistribution(
            self.ids.reshape(-1, self.k),
            self.log_probs.reshape(-1, self.k),
            self.tail_log_mass.reshape(-1),
        )

    def select(self, rows: torch.Tensor) -> "TopKDistribution":
        """Rows picked by a boolean mask over the token dims or by indices along dim 0."""
        return TopKDistribution(self.ids[rows], self.log_probs[rows], self.tail_log_mass[rows])

    def split(self, sizes: Sequence[int], dim: int = 1) -> List["TopKDistribution"]:
        """Split along token dim ``dim`` (e.g. T of (B, T, k)) into pieces of ``sizes``."""
        dim = dim % self.tail_log_mass.dim()  # a token dim, never the k dim
        parts = zip(
            self.ids.split(list(sizes), dim),
            self.log_probs.split(list(sizes), dim),
            self.tail_log_mass.split(list(sizes), dim),
        )
        return [TopKDistribution(*fields) for fields in parts]

    def to(
        self, device: Union[torch.device, str], non_blocking: bool = False
    ) -> "TopKDistribution":
        """The same distribution on ``device`` (no copy for fields already there)."""
        return TopKDistribution(*(t.to(device, non_blocking=non_blocking) for t in self))


def topk_from_logits(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> TopKDistribution:
    """The top-k + tail form of ``softmax(logits / temperature)``.

    The softmax runs in float32 (float64 for float64 logits). The tail log mass is
    ``logsumexp`` over the tokens outside the top k minus ``logsumexp`` over all tokens,
    taken as the ``logsumexp`` of the log-softmax over the complement (the same value,
    without the rounding of a large shared offset); it is never ``log(1 - sum p)``, so a
    tail of 1e-30 keeps its digits. With ``k == V`` the tail is ``-inf``.

    Args:
        logits (torch.Tensor): logits of shape (..., V).
        k (int): tokens to keep per row, ``1 <= k <= V``.
        temperature (float): softmax temperature; the result is at this temperature and
            must be used with a loss of the same temperature. Default: 1.0.

    Returns:
        TopKDistribution: ids (..., k) int64 sorted by decreasing probability,
        log_probs (..., k) and tail_log_mass (...,) in the math dtype.
    """
    if not 1 <= k <= logits.size(-1):
        raise ValueError(f"k must be in [1, {logits.size(-1)}] (the vocab size), got {k}")
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    z = logits.to(_math_dtype(logits))
    if temperature != 1.0:
        z = z / temperature
    log_p = torch.log_softmax(z, dim=-1)
    log_probs, ids = log_p.topk(k, dim=-1)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
    return TopKDistribution(ids, log_probs, tail)


def _check_fields(teacher: TopKDistribution) -> None:
    """The three fields agree with each other."""
    if not isinstance(teacher, TopKDistribution):
        raise TypeError(f"expected a TopKDistribution, got {type(teacher).__name__}")
    ids, log_probs, tail = teacher
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() < 1:
        raise ValueError(f"ids must be an integer tensor (..., k), got {ids.dtype} {tuple(ids.shape)}")
    if log_probs.shape != ids.shape or tail.shape != ids.shape[:-1]:
        raise ValueError(
            f"TopKDistribution fields disagree: ids {tuple(ids.shape)}, log_probs "
            f"{tuple(log_probs.shape)}, tail_log_mass {tuple(tail.shape)} (expected "
            "(..., k), (..., k), (...,))"
        )


def _check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    """``k <= V``, every id in ``[0, V)`` and distinct within its row (checked on ``ids``)."""
    k = ids.size(-1)
    if k > vocab_size:
        raise ValueError(f"the teacher keeps k={k} tokens but the student vocab has {vocab_size}")
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"teacher token ids span [{low}, {high}], outside the student vocab [0, {vocab_size})"
        )
    if k > 1:
        ordered = ids.sort(dim=-1).values
        if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
            raise ValueError("teacher token ids repeat within a row; top-k ids must be distinct")


def _check_shapes(student_logits: torch.Tensor, teacher: TopKDistribution) -> None:
    """Student logits (..., V) and a teacher (..., k) have the same token dims."""
    _check_fields(teacher)
    if student_logits.shape[:-1] != teacher.shape:
        raise ValueError(
            f"student logits of shape {tuple(student_logits.shape)} do not match the "
            f"top-k teacher of shape {tuple(teacher.ids.shape)} (token dims must agree)"
        )


def _check_topk(student_logits: torch.Tensor, teacher: TopKDistribution) -> None:
    """A student logit tensor (..., V) and a teacher (..., k) fit together."""
    _check_shapes(student_logits, teacher)
    _check_ids(teacher.ids, student_logits.size(-1))


def _topk_for_tokens(
    teacher: TopKDistribution,
    n_tokens: int,
    labels: torch.Tensor,
    ignore_index: int,
    vocab_size: int,
    device: torch.device,
) -> TopKDistribution:
    """A teacher for ``n_tokens`` flattened tokens, flattened to (N, k) on ``device``.

    Its ids are checked on the rows whose label is not ``ignore_index`` only (masked
    rows of a cache may hold padding).
    """
    _check_fields(teacher)
    teacher = teacher.to(device).flatten()
    if not n_tokens == teacher.ids.size(0) == labels.numel():
        raise ValueError(
            f"token counts differ: student {n_tokens}, top-k teacher {teacher.ids.size(0)} "
            f"(shape {tuple(teacher.ids.shape)}), labels {labels.numel()}"
        )
    _check_ids(teacher.ids[labels.reshape(-1).to(device) != ignore_index], vocab_size)
    return teacher
