"""The optimizer-step loop of the distillation recipes: micro-batches accumulated into steps
whose gradient is the token-weighted mean over all their trained labels, at each step's
scheduled kd_ratio and KD temperature, with on-policy batches and the feature term where
switched on; a non-finite step skipped; metrics logged and step checkpoints written. What
distribution changes comes in as :class:`RankHooks`, so both recipes run this one loop."""

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import DictConfig
from torchtune import training
from tqdm import tqdm

from jsd_loss.training._kd_step import BatchLoss
from jsd_loss.training._memory import peak_memory_gib, reset_peak_memory
from jsd_loss.training._nonfinite import NonFiniteSteps
from jsd_loss.training._on_policy import OnPolicy
from jsd_loss.training._resume import Progress
from jsd_loss.training._schedules import KDSchedules


@dataclass(frozen=True)
class LoopSettings:
    """
    The loop's numbers from the recipe config (keys of the same names).

    Args:
        gradient_accumulation_steps (int): micro-batches per optimizer step.
        clip_grad_norm (Optional[float]): gradient norm clipped to. Default: None (not clipped)
        log_every_n_steps (int): a metrics record every this many steps. Default: 1
        save_every_n_steps (Optional[int]): a ``step_N`` checkpoint every this many steps.
            Default: None (only ``final``)
        log_peak_memory_stats (bool): ``peak_memory_gib`` in each record. Default: True
    """

    gradient_accumulation_steps: int
    clip_grad_norm: Optional[float] = None
    log_every_n_steps: int = 1
    save_every_n_steps: Optional[int] = None
    log_peak_memory_stats: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "LoopSettings":
        return cls(cfg.gradient_accumulation_steps, cfg.get("clip_grad_norm", None), cfg.get("log_every_n_steps", 1),
                   cfg.get("save_every_n_steps", None), cfg.get("log_peak_memory_stats", True))


def _own_stats(num_tokens, class_loss_sum, kd_loss_sum):
    return num_tokens, class_loss_sum, kd_loss_sum


def _own_done(done: bool) -> bool:
    return done


@dataclass(frozen=True)
class RankHooks:
    """
    What the loop needs of the other processes; the defaults are those of a single process.

    Args:
        is_rank_zero (bool): this process shows progress and logs metrics. Default: True
        grad_scale (float): the step's summed gradients are multiplied by it before being
            divided by its token count (FSDP2 averages gradients over ranks: the world size
            undoes that). Default: 1.0
        reduce_step_stats (Callable): ``(num_tokens, class_loss_sum, kd_loss_sum)`` of the
            whole step from this process's (summed over ranks). Default: this process's
        all_done (Callable[[bool], bool]): whether every rank is done generating (each
            forward of a sharded model is a collective). Default: this process's
    """

    is_rank_zero: bool = True
    grad_scale: float = 1.0
    reduce_step_stats: Callable = _own_stats
    all_done: Callable[[bool], bool] = _own_done


class TrainLoop:
    """
    The optimizer steps of a distillation run, from where ``progress`` stands to the end of its
    last epoch. A step's objective is ``(1 - kd_ratio) * CE + kd_ratio * KD``, both averaged
    over all trained labels of its micro-batches (and ranks), plus the feature term.

    Args:
        loss (BatchLoss): a micro-batch's losses; its ``student`` is trained, its ``teacher``
            also generates for ``on_policy.seq_kd`` and its ``features`` give the feature term.
        optimizer (torch.optim.Optimizer): over the student's trainable parameters.
        lr_scheduler (Any): stepped once per optimizer step, skipped steps included.
        dataloader (Any): batches of ``tokens`` and unshifted ``labels`` (see
            :class:`~jsd_loss.training.BatchLoss`); its ``sampler.set_epoch`` is called per epoch.
        schedules (KDSchedules): kd_ratio and KD temperature per step.
        nonfinite (NonFiniteSteps): which steps are skipped (raises after too many).
        metric_logger (Any): ``log_dict(record, step)`` on rank zero.
        progress (Progress): advanced in place; a resumed run continues where it says.
        settings (LoopSettings): accumulation, clipping, logging and checkpoint intervals.
        save_checkpoint (Callable[[str, bool], Any]): ``save_checkpoint(name, with_recipe_state)``,
            on every rank: ``step_N`` every ``save_every_n_steps`` steps, ``final`` at the end.
        ranks (RankHooks): the other processes. Default: none
        on_policy (Optional[OnPolicy]): generated batches. Default: None (off)
    """

    def __init__(
        self, loss: BatchLoss, optimizer: torch.optim.Optimizer, lr_scheduler: Any, dataloader: Any, *,
        schedules: KDSchedules, nonfinite: NonFiniteSteps, metric_logger: Any, progress: Progress,
        settings: LoopSettings, save_checkpoint: Callable[[str, bool], Any], ranks: RankHooks = RankHooks(),
        on_policy: Optional[OnPolicy] = None,
    ) -> None:
        self.loss, self.optimizer, self.lr_scheduler, self.dataloader = loss, optimizer, lr_scheduler, dataloader
        self.schedules, self.nonfinite, self.metric_logger = schedules, nonfinite, metric_logger
        self.progress, self.settings, self.save_checkpoint = progress, settings, save_checkpoint
        self.ranks, self.on_policy = ranks, on_policy
        self._kd_ratio, self._scheduled = schedules.kd_ratio.start, {}
        self._zero_stats()

    def _zero_stats(self) -> None:
        self._class_loss_sum, self._kd_loss_sum, self._num_tokens = 0.0, 0.0, 0

    def run(self) -> None:
        """Train to the end of the last epoch, then save ``final``."""
        p, accumulate, features = self.progress, self.settings.gradient_accumulation_steps, self.loss.features
        reset_peak_memory(self.loss.device)
        self._t0 = time.perf_counter()
        self.loss.student.train()
        steps_done_this_epoch = p.steps_done_this_epoch
        for epoch in range(p.epochs_run, p.total_epochs):
            pbar = tqdm(total=p.steps_per_epoch, initial=steps_done_this_epoch,
                        disable=None if self.ranks.is_rank_zero else True)
            self.dataloader.sampler.set_epoch(epoch)
            batches = enumerate(self.dataloader, start=steps_done_this_epoch * accumulate)
            if features is not None:  # read a step ahead: its token counts scale the feature term
                batches = features.batches(batches, accumulate, self.loss.losses.ignore_index)
            for idx, batch in batches:
                batch = {k: v.to(self.loss.device) for k, v in batch.items()}
                if idx % accumulate == 0:
                    self._begin_step()
                self._micro_step(batch)
                if (idx + 1) % accumulate == 0:
                    self._optimizer_step(epoch, pbar)
                    last_step = (idx + 1) // accumulate == p.steps_per_epoch
                    if last_step:
                        p.epochs_run += 1
                    every = self.settings.save_every_n_steps
                    if every and p.global_step % every == 0:
                        self.save_checkpoint(f"step_{p.global_step}", True)
                    self._t0 = time.perf_counter()  # after the save: its time is no step's
                    if last_step:
                        break
            pbar.close()
            steps_done_this_epoch = 0
        self.save_checkpoint("final", False)

    def _begin_step(self) -> None:
        """This step's kd_ratio and temperature, and whether its batches are generated."""
        self._scheduled = self.schedules.step(self.loss.losses.kd_loss, self.progress.global_step,
                                              self.progress.total_steps)
        self._kd_ratio = self._scheduled["kd_ratio"]
        if self.on_policy is not None:
            self.on_policy.begin_step(self.progress.global_step + 1)

    def _micro_step(self, batch: Dict[str, torch.Tensor]) -> None:
        """Backward of one micro-batch, its losses weighted by its trained labels."""
        if self.on_policy is not None:
            batch = self.on_policy.batch(batch, self.loss.student, self.loss.teacher, all_done=self.ranks.all_done)
        num_tokens = (batch["labels"][..., 1:] != self.loss.losses.ignore_index).sum()
        class_loss, kd_loss, feature_sum = self.loss(batch)
        if self.on_policy is not None:  # no CE on generated tokens unless asked
            class_loss = self.on_policy.class_loss(class_loss)
        # token-weighted: the step's gradient is the mean over all its tokens
        objective = ((1 - self._kd_ratio) * class_loss + self._kd_ratio * kd_loss) * num_tokens
        if feature_sum is not None:
            objective = objective + self.loss.features.objective(feature_sum)
        objective.backward()
        self._class_loss_sum += class_loss.detach() * num_tokens
        self._kd_loss_sum += kd_loss.detach() * num_tokens
        self._num_tokens += num_tokens

    def _optimizer_step(self, epoch: int, pbar: tqdm) -> None:
        """The accumulated gradients scaled to the step's mean, clipped and applied (unless
        not finite), the schedules stepped, and the step's record logged."""
        p, s, features, model = self.progress, self.settings, self.loss.features, self.loss.student
        num_tokens, class_loss_sum, kd_loss_sum = self.ranks.reduce_step_stats(
            self._num_tokens, self._class_loss_sum, self._kd_loss_sum)
        denom = max(int(num_tokens), 1)
        training.scale_grads(model, torch.tensor(self.ranks.grad_scale / denom))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [w for w in model.parameters() if w.requires_grad],
            max_norm=float(s.clip_grad_norm) if s.clip_grad_norm is not None else float("inf"),
        )
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        class_loss, kd_loss = float(class_loss_sum) / denom, float(kd_loss_sum) / denom
        loss = (1 - self._kd_ratio) * class_loss + self._kd_ratio * kd_loss
        # checked before the optimizer sees the step (raises after too many)
        skipped = self.nonfinite.skip(p.global_step + 1, loss, grad_norm)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()  # a skipped step still consumed its data and schedule slot
        p.global_step += 1
        if features is not None:  # the projections' step, and the term's mean
            feature_loss = features.step(denom, s.clip_grad_norm, apply=not skipped)
            loss += features.config.weight * feature_loss
        if self.ranks.is_rank_zero:
            pbar.update(1)
            pbar.set_description(f"{epoch + 1}|{p.global_step}|Loss: {loss:.4f}")
        if self.ranks.is_rank_zero and p.global_step % s.log_every_n_steps == 0:
            record = {
                "loss": loss, "class_loss": class_loss, "kd_loss": kd_loss,
                "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                "tokens_per_second": int(num_tokens) / (time.perf_counter() - self._t0),
                "epoch": epoch, "skipped_steps": self.nonfinite.skipped,
            }
            if features is not None:
                record["feature_loss"] = feature_loss
            if self.schedules.scheduled:
                record.update(self._scheduled)
            if self.on_policy is not None:
                record.update(self.on_policy.metrics())
            if s.log_peak_memory_stats:
                record["peak_memory_gib"] = peak_memory_gib(self.loss.device)
            self.metric_logger.log_dict(record, step=p.global_step)
        self._zero_stats()
