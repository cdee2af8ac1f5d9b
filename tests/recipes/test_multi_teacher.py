"""``teachers:`` in the distillation recipe, end to end on tiny models (in process, as ``tune
run`` drives the recipe class): one listed teacher is the single-teacher run exactly, two
identical teachers are one, teachers of different sizes train, and what cannot work is refused
before any weights load."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice
from jsd_loss.teacher import TeacherEnsemble
from tests.conftest import REPO, TINY, TINY_MODEL, metrics, tiny_config, write_tiny_hf_dir
from tests.conftest import train_in_process as train
from tests.recipes.test_jsd_distill_distributed import tune_run_distributed

SHORT = {"max_steps_per_epoch": 3, "save_every_n_steps": None}
STEP_KEYS = ("loss", "class_loss", "kd_loss", "grad_norm", "lr")
FUSED = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "chunk_size": 16, "return_ce": True,
         "temperature": 1.5}
CHUNKED_T = {"_component_": "jsd_loss.JSDistillWithChunkedOutputLoss", "num_output_chunks": 1, "beta": 0.5,
             "temperature": 1.5}


def member(name, directory, weight=1.0, model=TINY_MODEL):
    return {"name": name, "weight": weight, "model": dict(model), "checkpointer": {
        "_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(directory),
        "checkpoint_files": ["model.safetensors"], "model_type": "LLAMA3_2", "output_dir": "${output_dir}"}}


def teachers(*members, fusion="mixture"):
    """Overrides for tiny_config: these teachers instead of teacher_model/teacher_checkpointer."""
    return {"teachers": {"fusion": fusion, "members": list(members)},
            "teacher_model": None, "teacher_checkpointer": None}


def run(tmp_path, name, tiny_dirs, **overrides):
    (tmp_path / name).mkdir()
    recipe = train(tiny_config(tmp_path / name, *tiny_dirs, **SHORT, **overrides))
    return recipe, metrics(tmp_path / name / "out"), load_state_dict(tmp_path / name / "out" / "final")


@pytest.mark.parametrize("kd_loss", ["chunked", "fused"])
def test_one_teacher_in_the_multi_teacher_list_is_the_single_teacher_run_exactly(tmp_path, tiny_dirs, kd_loss):
    loss = {"kd_loss": CHUNKED_T if kd_loss == "chunked" else FUSED}
    _, ref, ref_w = run(tmp_path, "single", tiny_dirs, **loss)
    recipe, got, got_w = run(tmp_path, "listed", tiny_dirs, **loss, **teachers(member("only", tiny_dirs[0], 0.3)))
    assert isinstance(recipe._teacher_model, TeacherEnsemble) and len(got) == 3
    for a, b in zip(ref, got):
        assert {k: b[k] for k in STEP_KEYS} == {k: a[k] for k in STEP_KEYS}
    assert sorted(got_w) == sorted(ref_w) and all(torch.equal(got_w[k], ref_w[k]) for k in ref_w)


@pytest.mark.parametrize("fusion", ["mixture", "product", "min_ce"])
def test_two_identical_multi_teachers_train_as_one_teacher(tmp_path, tiny_dirs, fusion):
    _, ref, ref_w = run(tmp_path, "single", tiny_dirs, kd_loss=FUSED)
    pair = teachers(member("a", tiny_dirs[0], 2.0), member("b", tiny_dirs[0], 1.0), fusion=fusion)
    _, got, got_w = run(tmp_path, "pair", tiny_dirs, kd_loss=FUSED, **pair)
    for a, b in zip(ref, got):
        for key in STEP_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for k in ref_w:
        torch.testing.assert_close(got_w[k], ref_w[k], rtol=1e-4, atol=1e-6)


WIDE = {**TINY, "embed_dim": 48, "num_heads": 6, "num_kv_heads": 3, "intermediate_dim": 96}


def wide_pair(tmp_path, tiny_dirs, teacher_dir, fusion):
    """The tiny teacher and a wider one (its own random weights), as teachers: overrides."""
    wide_dir = write_tiny_hf_dir(tmp_path / "wide", seed=3, tokenizer_from=teacher_dir, initializer_range=0.3,
                                 **{k: WIDE[k] for k in ("embed_dim", "num_heads", "num_kv_heads", "intermediate_dim")})
    return teachers(member("tiny", tiny_dirs[0], 0.7), member("wide", wide_dir, 0.3,
                    {"_component_": "jsd_loss.models.smollm2.smollm2", **WIDE}), fusion=fusion)


def test_multi_teachers_of_different_sizes_train_in_the_logit_and_the_fused_forms(tmp_path, tiny_dirs, teacher_dir):
    """A wider second teacher: chunked and fused-linear give the same run, and it differs from
    the first teacher alone."""
    pair = wide_pair(tmp_path, tiny_dirs, teacher_dir, "product")
    _, chunked, _ = run(tmp_path, "chunked", tiny_dirs, kd_loss=CHUNKED_T, **pair)
    _, fused, _ = run(tmp_path, "fused", tiny_dirs, kd_loss=FUSED, **pair)
    _, alone, _ = run(tmp_path, "alone", tiny_dirs, kd_loss=FUSED)
    for a, b in zip(chunked, fused):
        for key in STEP_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert all(r["kd_loss"] > 0 for r in fused) and fused[0]["kd_loss"] != pytest.approx(alone[0]["kd_loss"], rel=1e-3)


def test_two_ranks_with_multi_teachers_match_single_device(tmp_path, tiny_dirs, teacher_dir):
    """FSDP2 on 2 gloo ranks: each teacher sharded as the single one is; min_ce with the
    fused-linear loss (the members' roots stay unsharded for their output weights)."""
    pair = wide_pair(tmp_path, tiny_dirs, teacher_dir, "min_ce")
    common = {**SHORT, "max_steps_per_epoch": 2, "kd_loss": FUSED, **pair}
    single, dist = tmp_path / "single", tmp_path / "dist"
    single.mkdir(), dist.mkdir()
    train(tiny_config(single, *tiny_dirs, **common, batch_size=4))
    tune_run_distributed(tiny_config(dist, *tiny_dirs, **common, batch_size=2))
    ref, got = metrics(single / "out"), metrics(dist / "out")
    assert [r["step"] for r in got] == [1, 2]
    for a, b in zip(ref, got):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)


def test_multi_teacher_configs_that_cannot_work_are_refused_before_weights_load(tmp_path, tiny_dirs, monkeypatch):
    teacher, student = tiny_dirs
    other_vocab = write_tiny_hf_dir(tmp_path / "other_vocab", vocab_size=49153)
    loaded = []
    monkeypatch.setattr(KDRecipeSingleDevice, "_setup_teachers", lambda self, t: loaded.append(t))
    pair = teachers(member("tuned", teacher), member("odd", other_vocab))
    cases = [
        (pair, f"vocab mismatch between teacher 'tuned' ({teacher}) and teacher 'odd' ({other_vocab}): "
               "vocab_size 49152 vs 49153"),
        ({**pair, "teacher_model": dict(TINY_MODEL)}, "teachers: and teacher_model are both given"),
        ({**teachers(member("a", teacher), member("b", teacher)), "teacher_cache": str(tmp_path / "cache")},
         f"teachers: (2 teachers) cannot be used with teacher_cache={tmp_path / 'cache'}"),
        ({**teachers(member("a", teacher), member("b", teacher)), "on_policy": {"seq_kd": True, "max_new_tokens": 16}},
         "cannot be used with on_policy.seq_kd"),
        ({**teachers(member("a", teacher), member("b", teacher)), "feature_distillation": {"weight": 1.0}},
         "cannot be used with feature distillation"),
        (teachers(member("a", teacher), member("a", teacher)), "teachers.members names must be distinct"),
        (teachers(member("a", teacher), fusion="vote"), "teachers: teacher fusion must be one of mixture, product, min_ce"),
        (teachers(member("a", teacher, -1.0)), "teacher weights must be finite positive numbers"),
        (teachers(member("a", teacher, model={**TINY_MODEL, "intermediate_dim": 48})),
         "the teacher 'a' model config does not build the model of its checkpoint"),
    ]
    for i, (overrides, message) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        cfg = OmegaConf.load(tiny_config(d, teacher, student, **overrides))
        with pytest.raises(ValueError) as raised:
            KDRecipeSingleDevice(cfg).setup(cfg)
        assert message in str(raised.value), (message, str(raised.value))
    assert not loaded


def test_resuming_with_changed_multi_teachers_is_refused(tmp_path, tiny_dirs):
    pair = teachers(member("a", tiny_dirs[0], 0.5), member("b", tiny_dirs[0], 0.5))
    (tmp_path / "run").mkdir()
    path = tiny_config(tmp_path / "run", *tiny_dirs, **{**SHORT, "save_every_n_steps": 1}, **pair)
    train(path)
    cfg = OmegaConf.load(path)
    cfg.resume_from_checkpoint = True
    cfg.teachers.members[1].weight = 0.25
    with pytest.raises(ValueError, match=r"teachers was .* \(the teachers the student learns from"):
        KDRecipeSingleDevice(cfg).setup(cfg)


def test_shipped_multi_teacher_config_is_the_quick_config_with_two_teachers():
    quick = OmegaConf.to_container(OmegaConf.load(REPO / "configs/smollm2/135M_to_90M_jsd_quick.yaml"))
    multi = OmegaConf.load(REPO / "configs/smollm2/135M_to_90M_multi_teacher_quick.yaml")
    got = OmegaConf.to_container(multi)
    assert {k for k in {**quick, **got} if quick.get(k) != got.get(k)} == {
        "output_dir", "instruct_dir", "teacher_model", "teacher_checkpointer", "teachers"}
    members = OmegaConf.to_container(multi.teachers, resolve=True)
    assert members["fusion"] == "mixture" and [(m["name"], m["weight"]) for m in members["members"]] == [
        ("dolly_lora", 0.5), ("instruct", 0.5)]
    dirs = [m["checkpointer"]["checkpoint_dir"] for m in members["members"]]
    assert dirs == ["models/smollm2-135m-dolly-lora", "models/smollm2-135m-instruct"]
    assert [m["checkpointer"] for m in got["teachers"]["members"]][0] == {
        **quick["teacher_checkpointer"], "checkpoint_dir": "${teacher_dir}"}
    assert all(m["model"] == quick["teacher_model"] for m in got["teachers"]["members"])
    json.dumps(members)  # plain values
