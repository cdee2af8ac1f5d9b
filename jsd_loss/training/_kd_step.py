"""The two losses of a distillation step, CE on the labels and KD against a frozen teacher:
from the models' logits (whole, or in chunks for chunked losses) or, for a fused-linear KD
loss, from their final hidden states and output weights; and a micro-batch's losses as the
training loop takes them (labels shifted, the teacher live or cached, the feature term)."""

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config, modules

from jsd_loss.losses import FusedLinearDistillLoss, TopKDistribution
from jsd_loss.teacher import TeacherEnsemble, TopKTeacherCache
from jsd_loss.training._features import FeatureDistiller, capture_features
from jsd_loss.training._nonfinite import loss_labels
from jsd_loss.training._precision import Precision
from jsd_loss.training._teacher_cache import batch_teacher


@contextlib.contextmanager
def hidden_state_output(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model(...)`` returns final (normed) hidden states instead of logits."""
    output, chunks = model.output, model.num_output_chunks
    # an nn.Linear output is a registered child module; TiedLinear is a plain attribute
    model.output = nn.Identity() if isinstance(output, nn.Module) else (lambda h: h)
    model.num_output_chunks = 0
    try:
        yield
    finally:
        model.output, model.num_output_chunks = output, chunks


def output_weight(model: nn.Module) -> torch.Tensor:
    """The output projection's weight, laid out as ``nn.Linear.weight`` (the embeddings when tied)."""
    out = model.output
    return out.tied_module.weight if isinstance(out, modules.TiedLinear) else out.weight


@dataclass(frozen=True)
class KDLosses:
    """The CE loss (``loss``), the KD loss (``kd_loss``) and how the models must give them
    their input: ``num_output_chunks`` logit chunks (0: whole logits) or, when ``fused``,
    hidden states and output weights."""

    loss: nn.Module
    kd_loss: nn.Module
    num_output_chunks: int

    @property
    def fused(self) -> bool:
        return isinstance(self.kd_loss, FusedLinearDistillLoss)

    @property
    def ignore_index(self) -> int:
        return self.loss.ignore_index

    @property
    def temperature(self) -> float:
        """The KD loss's temperature now (1 for a loss without one, e.g. torchtune's)."""
        return getattr(self.kd_loss, "temperature", 1.0)


def setup_losses(cfg_loss: DictConfig, cfg_kd_loss: DictConfig) -> KDLosses:
    """Instantiate both losses; a chunked CE needs a KD loss with the same number of chunks
    (unless the KD loss is fused-linear, which takes no logits)."""
    losses = KDLosses(config.instantiate(cfg_loss), config.instantiate(cfg_kd_loss), 0)
    chunks = getattr(losses.loss, "num_output_chunks", 0)
    if not losses.fused and chunks:
        kd_chunks = getattr(losses.kd_loss, "num_output_chunks", None)
        if kd_chunks != chunks:
            raise ValueError(
                f"loss has num_output_chunks={chunks} but kd_loss has {kd_chunks}: "
                "a chunked CE needs a chunked KD loss with the same number of chunks"
            )
    return KDLosses(losses.loss, losses.kd_loss, chunks)


def kd_step(
    student: nn.Module,
    teacher: Union[nn.Module, TopKDistribution],
    tokens: torch.Tensor,
    labels: torch.Tensor,
    losses: KDLosses,
    *,
    dtype: torch.dtype,
    mask: Optional[torch.Tensor] = None,
    input_pos: Optional[torch.Tensor] = None,
    weight_of: Callable[[nn.Module], torch.Tensor] = output_weight,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    ``(class_loss, kd_loss)`` of one batch; the teacher runs without gradients, or is not
    run at all when its distributions come from a cache. Under mixed precision the caller
    runs it inside :meth:`~jsd_loss.training.Precision.autocast`.

    Args:
        student (nn.Module): the student (its ``num_output_chunks`` set as ``losses`` needs).
        teacher (Union[nn.Module, TopKDistribution]): the teacher (likewise), several
            (a :class:`~jsd_loss.teacher.TeacherEnsemble`: the loss gets their fusion at its
            temperature, from each member's logits or, fused-linear, hidden states), or the
            cached top-k distributions for this batch, (B, T, k).
        tokens (torch.Tensor): input tokens, (B, T).
        labels (torch.Tensor): next-token labels (already shifted), (B, T).
        losses (KDLosses): the two losses.
        dtype (torch.dtype): dtype of the student hidden states handed to a fused-linear loss.
        mask (Optional[torch.Tensor]): attention mask. Default: None
        input_pos (Optional[torch.Tensor]): positions. Default: None
        weight_of (Callable[[nn.Module], torch.Tensor]): a model's output weight as a
            fused-linear loss needs it. Default: :func:`output_weight`

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: CE and KD, each the mean over the batch's tokens.
    """
    cached = isinstance(teacher, TopKDistribution)
    if losses.fused:
        with hidden_state_output(student):
            hidden = student(tokens, mask=mask, input_pos=input_pos).to(dtype)
        if cached:
            teacher_hidden, teacher_weight = teacher, None
        elif isinstance(teacher, TeacherEnsemble):
            members_hidden = []
            for member in teacher.members:
                with torch.no_grad(), hidden_state_output(member):
                    members_hidden.append(member(tokens, mask=mask, input_pos=input_pos))
            teacher_hidden = teacher.fused_hidden(members_hidden, [weight_of(m) for m in teacher.members])
            teacher_weight = None
        else:
            with torch.no_grad(), hidden_state_output(teacher):
                # in the teacher's own dtype: the loss casts it for its matmul
                teacher_hidden = teacher(tokens, mask=mask, input_pos=input_pos)
            teacher_weight = weight_of(teacher)
        out = losses.kd_loss(hidden, weight_of(student), teacher_hidden, teacher_weight, labels)
        if losses.kd_loss.return_ce:
            kd_loss, class_loss = out
        else:
            kd_loss = out
            logits = student.output(hidden).float()
            if losses.num_output_chunks:
                logits = list(logits.chunk(losses.num_output_chunks, dim=1))
            else:
                logits, labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
            class_loss = losses.loss(logits, labels)
        return class_loss, kd_loss

    logits = student(tokens, mask=mask, input_pos=input_pos)
    if cached:
        teacher_logits = teacher
    elif isinstance(teacher, TeacherEnsemble):
        with torch.no_grad():
            teacher_logits = teacher(tokens, mask=mask, input_pos=input_pos, labels=labels,
                                     temperature=losses.temperature, ignore_index=losses.ignore_index)
    else:
        with torch.no_grad():
            teacher_logits = teacher(tokens, mask=mask, input_pos=input_pos)
    if not isinstance(logits, list):
        labels = labels.reshape(-1)
        logits = logits.reshape(-1, logits.size(-1))
        teacher_logits = (teacher_logits.flatten() if cached
                          else teacher_logits.reshape(-1, teacher_logits.size(-1)))
    kd_loss = losses.kd_loss(logits, teacher_logits, labels)
    class_loss = losses.loss(logits, labels)
    return class_loss, kd_loss


@dataclass
class BatchLoss:
    """
    A micro-batch's losses for the training loop: CE and KD as :func:`kd_step` gives them,
    the teacher live or read from a cache, forwards and losses under the run's precision,
    and the feature term from the same forwards.

    Args:
        student (nn.Module): the student.
        teacher (Optional[nn.Module]): the live teacher (or a
            :class:`~jsd_loss.teacher.TeacherEnsemble`); None when every row is cached.
        teacher_cache (Optional[TopKTeacherCache]): the teacher's cached top-k distributions
            (None: the teacher runs live).
        losses (KDLosses): the two losses.
        precision (Precision): the student's dtype and the autocast over forwards and losses.
        device (torch.device): where the models run.
        features (Optional[FeatureDistiller]): the feature term. Default: None (off)
        weight_of (Callable[[nn.Module], torch.Tensor]): a model's output weight as a
            fused-linear loss needs it. Default: :func:`output_weight`
    """

    student: nn.Module
    teacher: Optional[nn.Module]
    teacher_cache: Optional[TopKTeacherCache]
    losses: KDLosses
    precision: Precision
    device: torch.device
    features: Optional[FeatureDistiller] = None
    weight_of: Callable[[nn.Module], torch.Tensor] = output_weight

    def __call__(
        self, batch: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            batch (Dict[str, torch.Tensor]): ``tokens`` and unshifted ``labels``, each (B, T),
                on ``device``; optionally ``mask`` and ``input_pos``; ``row_ids`` (B, T) with a
                teacher cache or feature distillation.

        Returns:
            Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]: CE and KD, each the
            mean over the batch's trained labels, and the feature loss summed over its real
            tokens (None when feature distillation is off).
        """
        labels = batch["labels"]
        ignore_index = self.losses.ignore_index
        # Shift labels: position t predicts token t + 1
        labels = torch.hstack((labels[..., 1:], torch.full((labels.shape[0], 1), ignore_index, device=self.device)))
        teacher = batch_teacher(self.teacher_cache, self.teacher, batch, labels, ignore_index)
        with self.precision.autocast(self.device), capture_features(self.features, self.student, teacher) as feats:
            class_loss, kd_loss = kd_step(  # never all labels ignored: no 0/0 (weighted by 0 tokens)
                self.student, teacher, batch["tokens"], loss_labels(labels, ignore_index), self.losses,
                dtype=self.precision.dtype, mask=batch.get("mask", None), input_pos=batch.get("input_pos", None),
                weight_of=self.weight_of,
            )
            return class_loss, kd_loss, feats.loss_sum(batch["row_ids"]) if feats is not None else None
