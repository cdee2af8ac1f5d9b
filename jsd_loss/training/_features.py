"""Feature distillation in a training step: forward hooks that keep the mapped layers'
features of the student and of the teacher during the forwards the KD step runs anyway,
the feature loss between them (through a learned projection where asked), and the
bookkeeping that makes the term the mean over the step's real tokens under gradient
accumulation and across ranks. The learned projections live here, beside the student and
never in it: they have their own optimizer (built from the run's ``optimizer`` config, on
the run's schedule) and are saved in the recipe state, never in the student's weights."""

import contextlib
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterable, Iterator, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import config as tt_config

from jsd_loss.losses import feature_loss
from jsd_loss.training._feature_map import FeatureConfig, FeatureMap, feature_map

FEATURE_STATE = "feature_distillation"  # key of the recipe state


def _block(layer: nn.Module) -> nn.Module:
    """The transformer layer under an activation-checkpointing wrapper."""
    return getattr(layer, "_checkpoint_wrapped_module", layer)


def _hooked_module(model: nn.Module, layer: int, target: str) -> nn.Module:
    block = model.layers[layer]
    return block if target == "residual" else getattr(_block(block), "attn" if target == "attention" else "mlp")


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(x)
    return x


def _projection(fmap: FeatureMap, kind: str, rank: Optional[int]) -> nn.Module:
    d_s, d_t = fmap.student_width, fmap.teacher_width
    if kind == "low_rank":
        return nn.Sequential(nn.Linear(d_s, rank, bias=False), nn.Linear(rank, d_t, bias=False))
    linear = nn.Linear(d_s, d_t, bias=False)
    if d_s == d_t or fmap.teacher_channels is not None:
        # start where projection none would: identity, or the kept teacher channels
        channels = fmap.teacher_channels or range(d_s)
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[list(channels), list(range(d_s))] = 1.0
    return linear


class FeatureDistiller(nn.Module):
    """
    The feature term of a distillation step. Per token it is the mean, over the mapped
    (student layer, teacher layer) pairs and the targets, of the feature loss between the
    student's features (projected, when the projection is learned) and the teacher's
    (channel-selected, when the student is width-pruned); a step averages it over its real
    (non-padding) tokens, prompt and response, all accumulated batches and all ranks.

    Args:
        config (FeatureConfig): the checked config block.
        fmap (FeatureMap): layer pairs, widths, kept teacher channels.
        seed (int): the learned projections are drawn from it alone (the same on every rank).
        device (torch.device): where the projections live.
    """

    def __init__(self, config: FeatureConfig, fmap: FeatureMap, *, seed: int, device: torch.device):
        super().__init__()
        self.config, self.map = config, fmap
        self.projections = nn.ModuleDict()
        if config.projection != "none":
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for key, *_ in self._terms():
                    self.projections[key] = _projection(fmap, config.projection, config.rank)
            self.projections.to(device=device, dtype=torch.float32)
        selects = config.projection == "none" and fmap.teacher_channels is not None
        self._channels = torch.tensor(fmap.teacher_channels, device=device) if selects else None
        self._captured: Dict[Tuple[str, str, int], torch.Tensor] = {}
        self._device = device
        self._optimizer = self._lr_scheduler = None
        # of the step being accumulated: set by batches() (all ranks), and this rank's feature sum
        self._scale, self._step_real_tokens = 0.0, 0.0
        self._step_loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def _terms(self) -> Iterator[Tuple[str, str, int, int]]:
        """(projection key, target, student layer, teacher layer) of every term."""
        for target in self.config.targets:
            for s, t in self.map.pairs:
                yield f"{target}_{s}_{t}", target, s, t

    # ------------------------------------------------------------------ the forwards

    def _keep(self, key: Tuple[str, str, int], module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._captured[key] = output.detach() if key[0] == "teacher" else output

    @contextlib.contextmanager
    def capture(self, student: nn.Module, teacher: nn.Module) -> Iterator["FeatureDistiller"]:
        """Within the block, the forwards of ``student`` and ``teacher`` keep the mapped
        layers' features (the teacher's detached) for :meth:`loss_sum`; the hooks are gone
        after it, so activation checkpointing's recomputation in backward keeps nothing."""
        handles = []
        for who, model, layers in (("student", student, {s for s, _ in self.map.pairs}),
                                   ("teacher", teacher, {t for _, t in self.map.pairs})):
            for layer in sorted(layers):
                for target in self.config.targets:
                    module = _hooked_module(model, layer, target)
                    handles.append(module.register_forward_hook(partial(self._keep, (who, target, layer))))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._captured = {}

    def loss_sum(self, row_ids: torch.Tensor) -> torch.Tensor:
        """
        The feature loss summed over the real tokens of the batch just run in :meth:`capture`.

        Args:
            row_ids (torch.Tensor): the batch's ``row_ids``, (B, T), -1 on padding.

        Returns:
            torch.Tensor: float32 scalar: per-token mean over pairs and targets, summed.
        """
        real = row_ids >= 0
        total = 0.0
        for key, target, s, t in self._terms():
            try:
                student = self._captured[("student", target, s)]
                teacher = self._captured[("teacher", target, t)]
            except KeyError:
                raise RuntimeError(f"no {target} features of student layer {s} / teacher layer {t} were captured: "
                                   "run both forwards inside FeatureDistiller.capture") from None
            if key in self.projections:
                student = self.projections[key](student.float())
            elif self._channels is not None:
                teacher = teacher.index_select(-1, self._channels)
            total = total + feature_loss(student, teacher, real, self.config.loss, reduction="sum")
        return total / (len(self.map.pairs) * len(self.config.targets))

    # ------------------------------------------------------------------ the step

    def batches(self, batches: Iterable, gradient_accumulation_steps: int, ignore_index: int) -> Iterator:
        """``batches`` (``(idx, batch)`` pairs) a step's worth at a time, read ahead so that the
        step's label and real-token counts (all ranks) are known before its first backward."""
        batches = iter(batches)
        while True:
            window = list(islice(batches, gradient_accumulation_steps))
            if not window:
                return
            counts = torch.tensor([[(b["labels"][..., 1:] != ignore_index).sum(), (b["row_ids"] >= 0).sum()]
                                   for _, b in window], dtype=torch.float64).sum(0)
            labels, real = _sum_over_ranks(counts.to(self._device)).tolist()
            # the recipe divides the step's summed gradients by its label tokens
            self._scale = self.config.weight * max(labels, 1.0) / max(real, 1.0)
            self._step_real_tokens = real
            yield from window

    def objective(self, batch_loss_sum: torch.Tensor) -> torch.Tensor:
        """What a batch adds to the recipe's ``loss * label tokens``: its feature sum, scaled
        so that the step's gradient is ``weight`` times the feature loss's mean over real tokens."""
        self._step_loss_sum += batch_loss_sum.detach()
        return self._scale * batch_loss_sum

    def setup_optimizer(
        self, cfg_optimizer: DictConfig, cfg_lr_scheduler: DictConfig, *, num_training_steps: int,
        last_epoch: int, state: Optional[Dict[str, Any]] = None,
    ) -> None:
        """The learned projections' optimizer and schedule, of the run's config, and their
        saved state when resuming (``state``: the recipe state)."""
        saved = (state or {}).get(FEATURE_STATE)
        if state is not None and saved is None and self.projections:
            raise ValueError("the checkpoint being resumed has no feature_distillation state (it was trained "
                             "without learned projections): its projections cannot be restored")
        if saved is not None:
            layout = self._layout()
            if saved["layout"] != layout:
                raise ValueError(f"the checkpoint's feature_distillation ({saved['layout']}) differs from this "
                                 f"config's ({layout}): resume with the config it was trained with")
            self.projections.load_state_dict(saved["projections"])
        if not self.projections:
            return
        self._optimizer = tt_config.instantiate(cfg_optimizer, list(self.projections.parameters()))
        if saved is not None:
            self._optimizer.load_state_dict(saved["optimizer"])
        self._lr_scheduler = tt_config.instantiate(
            cfg_lr_scheduler, self._optimizer, num_training_steps=num_training_steps, last_epoch=last_epoch)

    def step(self, label_tokens: float, max_norm: Optional[float], apply: bool = True) -> float:
        """End of a step: the projections' gradients summed over ranks, divided by the step's
        ``label_tokens`` as the student's are, clipped to ``max_norm`` on their own, and
        applied (dropped when not ``apply``: a skipped step; the schedule moves on either way).
        Returns the step's feature loss, the mean over its real tokens."""
        loss_sum = float(_sum_over_ranks(self._step_loss_sum.clone()))
        self._step_loss_sum.zero_()
        if self._optimizer is not None:
            params = [p for p in self.projections.parameters() if p.grad is not None]
            if apply:
                for p in params:
                    _sum_over_ranks(p.grad).div_(label_tokens)
                torch.nn.utils.clip_grad_norm_(params, float(max_norm) if max_norm is not None else float("inf"))
                self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
            self._lr_scheduler.step()
        return loss_sum / max(self._step_real_tokens, 1.0)

    def _layout(self) -> Dict[str, Any]:
        c = self.config
        return {"pairs": [list(p) for p in self.map.pairs], "targets": list(c.targets),
                "projection": c.projection, "rank": c.rank}

    def recipe_state(self) -> Dict[str, Any]:
        """Projections (CPU tensors), their optimizer state and the layout, for ``recipe_state.pt``."""
        return {"layout": self._layout(),
                "projections": {k: v.detach().cpu() for k, v in self.projections.state_dict().items()},
                "optimizer": self._optimizer.state_dict() if self._optimizer is not None else None}


def setup_feature_distillation(
    config: Optional[FeatureConfig], student_hf_config: dict, teacher_hf_config: dict, student_dir: Path,
    *, seed: int, device: torch.device,
) -> Optional[FeatureDistiller]:
    """The run's :class:`FeatureDistiller` (None when feature distillation is off), its layer
    map checked against the two models' ``config.json`` before any weights load."""
    if config is None:
        return None
    return FeatureDistiller(config, feature_map(config, student_hf_config, teacher_hf_config, student_dir),
                            seed=seed, device=device)


def capture_features(
    distiller: Optional[FeatureDistiller], student: nn.Module, teacher: nn.Module
) -> ContextManager[Optional[FeatureDistiller]]:
    """``distiller.capture(student, teacher)``, or a block that does nothing (and gives None)
    when feature distillation is off."""
    return contextlib.nullcontext() if distiller is None else distiller.capture(student, teacher)
