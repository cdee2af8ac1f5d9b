"""Checks of a distillation config's inputs that must fail before any model is built or
data tokenized, and of the built models against each other and the tokenizer."""

import json
from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig
from torch import nn

from jsd_loss.checkpointing import read_config, verify_file


def check_checkpoint_files(ckpt: DictConfig, who: str) -> None:
    """Every file a checkpointer config lists exists in its ``checkpoint_dir``."""
    for name in ckpt.get("checkpoint_files", []):
        if not (Path(ckpt.checkpoint_dir) / name).is_file():
            raise FileNotFoundError(f"{who} checkpoint file not found: {Path(ckpt.checkpoint_dir) / name}")


def check_checkpoints(student: DictConfig, teacher: DictConfig, who: str = "teacher") -> Tuple[dict, dict]:
    """``config.json`` of the student's and the teacher's checkpoint directories, once their
    checkpoint files exist, match their ``checksums.json`` (directories written here have one;
    hashing is about 1 GB/s) and the two agree on vocabulary and tokenizer.

    Args:
        student (DictConfig): the student's checkpointer config (``checkpoint_dir``,
            ``checkpoint_files``).
        teacher (DictConfig): the teacher's.
        who (str): how messages name the teacher. Default: "teacher"

    Returns:
        Tuple[dict, dict]: the student's and the teacher's ``config.json``.

    Raises:
        ValueError: naming the file, for a weight file that differs from its recorded checksum,
            and for a vocabulary or tokenizer mismatch.
    """
    student_dir, teacher_dir = Path(student.checkpoint_dir), Path(teacher.checkpoint_dir)
    student_cfg, teacher_cfg = read_config(student_dir), read_config(teacher_dir)
    check_checkpoint_files(student, "student")
    check_checkpoint_files(teacher, who)
    # torchtune's checkpointer reads safetensors unverified; only the files it reads are checked (its
    # outputs carry a copy of the input dir's checksums.json, which lists the input's weight files)
    for ckpt, directory in ((student, student_dir), (teacher, teacher_dir)):
        for name in ckpt.get("checkpoint_files", []):
            verify_file(directory / name)
    if student_cfg.get("vocab_size") != teacher_cfg.get("vocab_size"):
        raise ValueError(
            f"vocab mismatch: student ({student_dir}) has vocab_size {student_cfg.get('vocab_size')}, "
            f"{who} ({teacher_dir}) has {teacher_cfg.get('vocab_size')}; distillation compares "
            "distributions over the same vocabulary"
        )
    tok_files = [d / "tokenizer.json" for d in (student_dir, teacher_dir)]
    if all(f.is_file() for f in tok_files):
        vocabs = [json.loads(f.read_text())["model"]["vocab"] for f in tok_files]
        if vocabs[0] != vocabs[1]:
            raise ValueError(f"tokenizer mismatch: {tok_files[0]} and {tok_files[1]} map tokens to different ids")
    return student_cfg, teacher_cfg


def text_vocab_size(tokenizer) -> Optional[int]:
    """How many token ids a tokenizer encodes text to: its ``vocab_size`` less the media
    placeholders (``image_id``) at the top of its id range, which text never encodes to
    (torchtune's Llama 3 tokenizer registers ``<|image|>`` at 128256, one past the 128,256
    embeddings of the text models, for the vision models only). None when it has no
    ``vocab_size``."""
    size = getattr(tokenizer, "vocab_size", None)
    if size is None:
        return None
    media = {getattr(tokenizer, "image_id", None)} - {None}
    while size - 1 in media:
        size -= 1
    return size


def check_models_agree(student: nn.Module, teacher: nn.Module, tokenizer) -> None:
    """Student and teacher share a vocabulary that covers the ids the tokenizer encodes text
    to (see :func:`text_vocab_size`)."""
    s_vocab = student.tok_embeddings.num_embeddings
    t_vocab = teacher.tok_embeddings.num_embeddings
    if s_vocab != t_vocab:
        raise ValueError(f"vocab mismatch: student model has {s_vocab} tokens, teacher model {t_vocab}")
    tok_vocab = text_vocab_size(tokenizer)
    if tok_vocab is not None and tok_vocab > s_vocab:
        raise ValueError(f"the tokenizer has {tok_vocab} tokens but the models only {s_vocab}")
