"""Schedules for per-step scalars of the distillation objective (KD temperature, kd_ratio).

A schedule is a value per optimizer step: ``schedule(step, total_steps)`` with ``step`` the
number of optimizer steps already taken (0 for the first). It is a pure function of the
step, so a resumed run continues it where it stopped. In a config a scalar key accepts a
number (constant) or a component::

    kd_ratio:
      _component_: jsd_loss.training.LinearSchedule
      start: 0.2
      end: 0.8
      warmup_steps: 10       # optional: from warmup_from (default: start) to start
      hold_steps: 20         # optional: then start for this many steps
    kd_loss:
      _component_: jsd_loss.JSDistillWithChunkedOutputLoss
      temperature:           # soft first, then sharpening to 1
        _component_: jsd_loss.training.CosineSchedule
        start: 2.0
        end: 1.0

After warmup and hold, the value moves from ``start`` to ``end`` over the remaining steps
(reaching ``end`` at the last step) and stays there.
"""

import math
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf


class Schedule:
    """A value per optimizer step; subclasses give the shape of the move from start to end.

    Args:
        start (float): value after warmup, held for ``hold_steps``.
        end (float): value at the last step.
        warmup_steps (int): steps ramping linearly from ``warmup_from`` to ``start``. Default: 0
        hold_steps (int): steps at ``start`` after the warmup. Default: 0
        warmup_from (Optional[float]): first value of the warmup. Default: ``start``

    Raises:
        ValueError: for negative step counts or non-finite values.
    """

    def __init__(self, start: float, end: float, warmup_steps: int = 0, hold_steps: int = 0,
                 warmup_from: Optional[float] = None) -> None:
        values = {"start": start, "end": end, "warmup_from": start if warmup_from is None else warmup_from}
        bad = [f"{k}={v!r}" for k, v in values.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise ValueError(f"{type(self).__name__}: values must be finite numbers, got " + ", ".join(bad))
        for name, steps in (("warmup_steps", warmup_steps), ("hold_steps", hold_steps)):
            if not isinstance(steps, int) or steps < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a non-negative integer, got {steps!r}")
        self.start, self.end = float(start), float(end)
        self.warmup_from = float(values["warmup_from"])
        self.warmup_steps, self.hold_steps = warmup_steps, hold_steps

    def shape(self, progress: float) -> float:
        """Fraction of the way from start to end at ``progress`` in [0, 1]."""
        raise NotImplementedError

    def __call__(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_from + (self.start - self.warmup_from) * step / self.warmup_steps
        moving = step - self.warmup_steps - self.hold_steps
        if moving < 0:
            return self.start
        span = total_steps - 1 - self.warmup_steps - self.hold_steps
        progress = 1.0 if span <= 0 else min(moving / span, 1.0)
        return self.start + (self.end - self.start) * self.shape(progress)

    def bounds(self) -> tuple:
        """The smallest and largest value the schedule takes."""
        values = (self.start, self.end, self.warmup_from)
        return min(values), max(values)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(start={self.start}, end={self.end}, warmup_steps={self.warmup_steps}, "
                f"hold_steps={self.hold_steps}, warmup_from={self.warmup_from})")


class ConstantSchedule(Schedule):
    """``value`` at every step (what a plain number in the config means)."""

    def __init__(self, value: float) -> None:
        super().__init__(value, value)

    def shape(self, progress: float) -> float:
        return 0.0


class LinearSchedule(Schedule):
    """Straight from ``start`` to ``end``."""

    def shape(self, progress: float) -> float:
        return progress


class CosineSchedule(Schedule):
    """Half a cosine from ``start`` to ``end``: slow at both ends."""

    def shape(self, progress: float) -> float:
        return (1.0 - math.cos(math.pi * progress)) / 2.0


def as_schedule(value: Union[float, int, dict, DictConfig, Schedule], name: str) -> Schedule:
    """A config value (number, schedule component node, or a Schedule) as a Schedule.

    Raises:
        ValueError: naming ``name``, for anything else.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number or a schedule component, got {value!r}")
    if isinstance(value, (int, float)):
        return ConstantSchedule(float(value))
    if isinstance(value, (dict, DictConfig)) and "_component_" in value:
        from torchtune import config

        node = value if isinstance(value, DictConfig) else OmegaConf.create(value)
        schedule: Any = config.instantiate(node)
        if not isinstance(schedule, Schedule):
            raise ValueError(f"{name}: {node._component_} is not a jsd_loss.training schedule")
        return schedule
    raise ValueError(f"{name} must be a number or a schedule component (_component_: "
                     f"jsd_loss.training.LinearSchedule, ...), got {value!r}")


ONE_TEMPERATURE = ("kd_loss.temperature is a schedule, but a teacher_cache holds the teacher's distributions at "
                   "one temperature: use a constant temperature with the cache")


def _one_temperature(schedule: Schedule) -> float:
    if schedule.bounds()[0] != schedule.bounds()[1]:
        raise ValueError(ONE_TEMPERATURE)
    return schedule.start


def kd_temperature(cfg: DictConfig) -> float:
    """The config's KD temperature (1.0 without a kd_loss), as a teacher cache is built and read at.

    Raises:
        ValueError: if ``kd_loss.temperature`` is a schedule that changes.
    """
    if "kd_loss" not in cfg:
        return 1.0
    return _one_temperature(as_schedule(cfg.kd_loss.get("temperature", 1.0), "kd_loss.temperature"))


class KDSchedules:
    """The objective's per-step scalars of a distillation config: ``kd_ratio`` (a number or
    a schedule, within [0, 1]) and ``kd_loss.temperature`` (a number or a schedule, > 0).

    Args:
        cfg (DictConfig): the recipe config.

    Raises:
        ValueError: naming the key, for a value out of range or a non-constant temperature
            with a ``teacher_cache`` (a cache holds the teacher at one temperature).
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.kd_ratio = as_schedule(cfg.get("kd_ratio", 0.5), "kd_ratio")
        lo, hi = self.kd_ratio.bounds()
        if lo < 0.0 or hi > 1.0:
            shown = self.kd_ratio.start if isinstance(self.kd_ratio, ConstantSchedule) else self.kd_ratio
            raise ValueError(f"kd_ratio must be in [0, 1], got {shown}")
        raw = cfg.kd_loss.get("temperature", None) if "kd_loss" in cfg else None
        self.temperature = None if raw is None else as_schedule(raw, "kd_loss.temperature")
        if self.temperature is not None:
            lo, hi = self.temperature.bounds()
            if lo <= 0.0:
                raise ValueError(f"kd_loss.temperature must stay > 0, the schedule reaches {lo}")
            if cfg.get("teacher_cache", None):
                _one_temperature(self.temperature)
        self.scheduled = not all(s is None or s.bounds()[0] == s.bounds()[1] for s in (self.kd_ratio, self.temperature))

    def kd_loss_config(self, cfg_kd_loss: DictConfig) -> DictConfig:
        """``kd_loss`` with its temperature as the schedule's first value (what the loss is built with)."""
        if self.temperature is None:
            return cfg_kd_loss
        node = OmegaConf.create(OmegaConf.to_container(cfg_kd_loss, resolve=True))
        node.temperature = self.temperature.start if self.temperature.warmup_steps == 0 else self.temperature.warmup_from
        return node

    def step(self, kd_loss: Any, step: int, total_steps: int) -> dict:
        """Set the KD loss's temperature for optimizer step ``step`` (0-based) and return
        this step's ``{"kd_ratio": ..., "kd_temperature": ...}``.

        Raises:
            ValueError: if the temperature is scheduled and the loss has no ``temperature``.
        """
        values = {"kd_ratio": self.kd_ratio(step, total_steps)}
        if self.temperature is not None:
            t = self.temperature(step, total_steps)
            holders = [m for m in kd_loss.modules() if hasattr(m, "temperature")]
            if not holders:
                raise ValueError(f"{type(kd_loss).__name__} has no temperature to schedule")
            for module in holders:
                module.temperature = t
            values["kd_temperature"] = t
        return values
