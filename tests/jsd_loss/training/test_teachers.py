"""The teachers of a config (jsd_loss.training._teachers): the single teacher, ``teachers:``,
their identity for resuming, and teachers that do not share a tokenizer."""

import json

import pytest
from omegaconf import OmegaConf

from jsd_loss.training import check_resume, check_teacher_checkpoints, run_identity, teachers_config
from tests.conftest import write_tiny_hf_dir

CKPT = {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_files": ["model.safetensors"]}
MODEL = {"_component_": "jsd_loss.models.smollm2.smollm2_135m"}


def _cfg(**extra):
    return OmegaConf.create({"teacher_model": MODEL, "teacher_checkpointer": {**CKPT, "checkpoint_dir": "t"}, **extra})


def _listed(*dirs, fusion="min_ce"):
    members = [{"name": f"m{i}", "weight": i + 1, "model": MODEL, "checkpointer": {**CKPT, "checkpoint_dir": str(d)}}
               for i, d in enumerate(dirs)]
    return OmegaConf.create({"teachers": {"fusion": fusion, "members": members}})


def test_the_single_teacher_and_a_multi_teacher_list():
    single = teachers_config(_cfg())
    assert not single.listed and [m.name for m in single.members] == ["teacher"] and single.members[0].who == "teacher"
    listed = teachers_config(_listed("a", "b"))
    assert listed.listed and listed.fusion == "min_ce" and [m.weight for m in listed.members] == [1.0, 2.0]
    assert listed.members[1].who == "teacher 'm1'"
    assert listed.identity() == {"fusion": "min_ce", "members": [
        {"name": "m0", "weight": 1.0, "checkpoint_dir": "a", "checkpoint_files": ["model.safetensors"]},
        {"name": "m1", "weight": 2.0, "checkpoint_dir": "b", "checkpoint_files": ["model.safetensors"]}]}
    json.dumps(listed.identity())  # plain values: the recipe state is read with weights_only=True


def test_resuming_with_other_multi_teachers_is_refused_naming_the_key(tmp_path):
    base = OmegaConf.create({"batch_size": 1, "gradient_accumulation_steps": 1, "max_steps_per_epoch": 1, "epochs": 1,
                             "shuffle": False, "dataset": {}})
    saved = {"run": run_identity(base, 1, {}, teachers=teachers_config(_listed("a", "b")).identity())}
    check_resume(saved, run_identity(base, 1, {}, teachers=teachers_config(_listed("a", "b")).identity()), tmp_path)
    changed = run_identity(base, 1, {}, teachers=teachers_config(_listed("a", "b", fusion="mixture")).identity())
    with pytest.raises(ValueError, match=r"teachers was .*min_ce.* is .*mixture.* \(the teachers the student learns from"):
        check_resume(saved, changed, tmp_path)


def test_multi_teachers_with_different_tokenizers_are_refused_naming_both(tmp_path):
    a, b, student = (write_tiny_hf_dir(tmp_path / n, vocab_size=8) for n in ("a", "b", "student"))
    for d, vocab in ((a, {"x": 0, "y": 1}), (b, {"x": 1, "y": 0}), (student, {"x": 0, "y": 1})):
        (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    student_ckpt = OmegaConf.create({**CKPT, "checkpoint_dir": str(student)})
    with pytest.raises(ValueError, match=f"tokenizer mismatch between teacher 'm0' \\({a}\\) and teacher 'm1' \\({b}\\)"):
        check_teacher_checkpoints(student_ckpt, teachers_config(_listed(a, b)))
    student_cfg, teacher_cfgs = check_teacher_checkpoints(student_ckpt, teachers_config(_listed(a, a)))
    assert student_cfg["vocab_size"] == 8 and [c["vocab_size"] for c in teacher_cfgs] == [8, 8]
    odd = write_tiny_hf_dir(tmp_path / "odd", vocab_size=9)
    with pytest.raises(ValueError, match=f"vocab mismatch: student \\({student}\\) has vocab_size 8, teacher 'm0' "
                                         f"\\({odd}\\) has 9"):
        check_teacher_checkpoints(student_ckpt, teachers_config(_listed(odd)))


def test_malformed_multi_teacher_blocks_are_refused():
    with pytest.raises(ValueError, match="teachers.members must be a non-empty list"):
        teachers_config(OmegaConf.create({"teachers": {"members": []}}))
    with pytest.raises(ValueError, match="teachers must be a mapping of fusion, members"):
        teachers_config(OmegaConf.create({"teachers": {"members": [], "mode": "x"}}))
    with pytest.raises(ValueError, match=r"teachers.members\[0\] must be a mapping with name, model, checkpointer"):
        teachers_config(OmegaConf.create({"teachers": {"members": [{"name": "a", "model": MODEL}]}}))
    with pytest.raises(ValueError, match="no teacher: teacher_checkpointer missing; give teacher_model and"):
        teachers_config(OmegaConf.create({"teacher_model": MODEL}))
    with pytest.raises(ValueError, match="teachers: and teacher_model and teacher_checkpointer are both given"):
        teachers_config(OmegaConf.merge(_cfg(), _listed("a")))
