"""The teachers of a distillation config: the single ``teacher_model`` /
``teacher_checkpointer``, or several under ``teachers:`` (each a name, a weight, a model and a
checkpointer, and one fusion), checked before anything is built::

    teachers:
      fusion: mixture        # mixture | product | min_ce (jsd_loss.losses.fuse_logits)
      members:
        - name: dolly_lora
          weight: 0.5
          model: {_component_: jsd_loss.models.smollm2.smollm2_135m}
          checkpointer: {_component_: torchtune.training.FullModelHFCheckpointer, checkpoint_dir: ..., ...}
        - name: instruct
          ...
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchtune import utils

from jsd_loss.checkpointing import read_config
from jsd_loss.losses import check_fusion
from jsd_loss.teacher import TeacherEnsemble
from jsd_loss.training._inputs import check_checkpoints
from jsd_loss.training._models import checkpoint_weights

_BLOCK_KEYS = ("fusion", "members")
_MEMBER_KEYS = ("name", "weight", "model", "checkpointer")


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: its name (``teacher`` for the single one), weight, model and checkpointer configs."""

    name: str
    weight: float
    model: DictConfig
    checkpointer: DictConfig

    @property
    def who(self) -> str:
        """How messages name it: ``teacher``, or ``teacher 'name'`` in a list."""
        return "teacher" if self.name == "teacher" else f"teacher {self.name!r}"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpointer.checkpoint_dir)


@dataclass(frozen=True)
class TeachersConfig:
    """The run's teachers; ``listed``: they come from ``teachers:`` (fused by a
    :class:`~jsd_loss.teacher.TeacherEnsemble`, even one), else the single teacher."""

    members: Tuple[TeacherSpec, ...]
    fusion: str = "mixture"
    listed: bool = False

    def identity(self) -> Dict[str, Any]:
        """What a resumed run must keep (plain values): fusion, names, weights, checkpoints."""
        return {"fusion": self.fusion, "members": [
            {"name": m.name, "weight": m.weight, "checkpoint_dir": str(m.checkpointer.checkpoint_dir),
             "checkpoint_files": list(m.checkpointer.get("checkpoint_files", []))} for m in self.members]}


def teachers_config(cfg: DictConfig, *, features: bool = False, seq_kd: bool = False) -> TeachersConfig:
    """
    The teachers ``cfg`` asks for (``features``, ``seq_kd``: whether the run distils
    features, generates with the teacher).

    Raises:
        ValueError: naming the keys, for no teacher at all, ``teachers:`` beside ``teacher_model`` or
            ``teacher_checkpointer``, a malformed block, an unknown fusion, weights that are
            not positive, names that repeat, and what several teachers do not support: a
            ``teacher_cache``, feature distillation, on-policy ``seq_kd``.
    """
    block = cfg.get("teachers", None)
    if block is None:
        missing = [k for k in ("teacher_model", "teacher_checkpointer") if cfg.get(k, None) is None]
        if missing:
            raise ValueError(f"no teacher: {' and '.join(missing)} missing; give teacher_model and "
                             "teacher_checkpointer, or several teachers under teachers:")
        return TeachersConfig((TeacherSpec("teacher", 1.0, cfg.teacher_model, cfg.teacher_checkpointer),))
    single = [k for k in ("teacher_model", "teacher_checkpointer") if cfg.get(k, None) is not None]
    if single:
        raise ValueError(f"teachers: and {' and '.join(single)} are both given: list every teacher under "
                         "teachers.members (one member is the single teacher), or remove teachers:")
    if not isinstance(block, DictConfig) or sorted(set(block) - set(_BLOCK_KEYS)):
        raise ValueError(f"teachers must be a mapping of {', '.join(_BLOCK_KEYS)}, got "
                         f"{OmegaConf.to_container(block) if isinstance(block, DictConfig) else block!r}")
    members = block.get("members", None)
    if not (OmegaConf.is_list(members) or isinstance(members, (list, tuple))) or not members:
        raise ValueError(f"teachers.members must be a non-empty list of teachers, got {members!r}")
    specs = []
    for i, m in enumerate(members):
        if not isinstance(m, DictConfig) or set(m) - set(_MEMBER_KEYS) or not {"name", "model", "checkpointer"} <= set(m):
            raise ValueError(f"teachers.members[{i}] must be a mapping with name, model, checkpointer and "
                             f"optionally weight (default 1), got {OmegaConf.to_container(m) if isinstance(m, DictConfig) else m!r}")
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"teachers.members[{i}].weight must be a number, got {weight!r}")
        specs.append(TeacherSpec(str(m.name), float(weight), m.model, m.checkpointer))
    fusion = block.get("fusion", "mixture")
    try:
        check_fusion(fusion, [s.weight for s in specs])
    except ValueError as e:
        raise ValueError(f"teachers: {e}") from None
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"teachers.members names must be distinct, got {names}")
    refused = [why for on, why in (
        (cfg.get("teacher_cache", None), f"teacher_cache={cfg.get('teacher_cache', None)} (a cache holds one "
         "teacher's top-k distributions; a cache of the fused teacher is not implemented: remove teacher_cache)"),
        (features, "feature distillation (which teacher's features is not defined: set feature_distillation.weight: 0)"),
        (seq_kd, "on_policy.seq_kd (generating from several teachers is not implemented: set on_policy.seq_kd: False)"),
    ) if on]
    if refused:
        raise ValueError(f"teachers: ({len(specs)} teachers) cannot be used with " + "; ".join(refused))
    return TeachersConfig(tuple(specs), fusion, listed=True)


def check_teacher_checkpoints(student: DictConfig, teachers: TeachersConfig) -> Tuple[dict, List[dict]]:
    """``config.json`` of the student's and every teacher's checkpoint directory, once the
    teachers agree with each other on vocabulary and tokenizer and each passes
    :func:`~jsd_loss.training.check_checkpoints` against the student (before any weights load).

    Raises:
        ValueError: naming both teachers (or the student and the teacher) for a vocabulary or
            tokenizer mismatch; see :func:`~jsd_loss.training.check_checkpoints`.
    """
    first = teachers.members[0]
    for other in teachers.members[1:]:
        _check_teachers_agree(first, other)
    checked = [check_checkpoints(student, m.checkpointer, who=m.who) for m in teachers.members]
    return checked[0][0], [t for _, t in checked]


def setup_teachers(
    teachers: TeachersConfig, setup_one: Callable[[DictConfig, Dict[str, Any], str], nn.Module],
    log: Optional[logging.Logger] = None,
) -> nn.Module:
    """
    The single teacher, or the listed ones as one :class:`~jsd_loss.teacher.TeacherEnsemble`;
    each built by ``setup_one(model_cfg, state_dict, who)`` from its checkpointer's weights,
    one checkpoint in memory at a time.

    Args:
        teachers (TeachersConfig): the run's teachers.
        setup_one (Callable[[DictConfig, Dict[str, Any], str], nn.Module]): a teacher from its
            model config, its weights and how messages name it.
        log (Optional[logging.Logger]): where rank zero reports the fusion. Default: None

    Returns:
        nn.Module: the teacher the KD step sees.
    """
    models = [setup_one(t.model, checkpoint_weights(t.checkpointer), t.who)
              for t in teachers.members]
    if not teachers.listed:
        return models[0]
    utils.log_rank_zero(log or logging.getLogger(__name__), f"{len(models)} teachers fused by {teachers.fusion}: "
                        + ", ".join(f"{t.name} (weight {t.weight:g})" for t in teachers.members))
    return TeacherEnsemble(models, [t.name for t in teachers.members], [t.weight for t in teachers.members],
                           teachers.fusion)


def _check_teachers_agree(a: TeacherSpec, b: TeacherSpec) -> None:
    sizes = [read_config(t.checkpoint_dir).get("vocab_size") for t in (a, b)]
    both = f"{a.who} ({a.checkpoint_dir}) and {b.who} ({b.checkpoint_dir})"
    if sizes[0] != sizes[1]:
        raise ValueError(f"vocab mismatch between {both}: vocab_size {sizes[0]} vs {sizes[1]}; "
                         "several teachers must share one tokenizer and vocabulary")
    files = [t.checkpoint_dir / "tokenizer.json" for t in (a, b)]
    if all(f.is_file() for f in files):
        vocabs = [json.loads(f.read_text())["model"]["vocab"] for f in files]
        if vocabs[0] != vocabs[1]:
            raise ValueError(f"tokenizer mismatch between {both}: their tokenizer.json map tokens to different "
                             "ids; several teachers must share one tokenizer and vocabulary")
