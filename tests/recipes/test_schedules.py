"""kd_ratio and KD temperature schedules through the single-device recipe (tiny models)."""

import shutil

import pytest

from tests.conftest import metrics, tiny_config, tune_run

LINEAR = "jsd_loss.training.LinearSchedule"
CONSTANT = "jsd_loss.training.ConstantSchedule"


def test_a_constant_schedule_reproduces_plain_numbers(tmp_path, tiny_dirs):
    plain_dir, scheduled_dir = tmp_path / "plain", tmp_path / "scheduled"
    plain_dir.mkdir(), scheduled_dir.mkdir()
    common = {"max_steps_per_epoch": 3, "save_every_n_steps": None}
    tune_run(tiny_config(plain_dir, *tiny_dirs, **common))
    tune_run(tiny_config(scheduled_dir, *tiny_dirs, **common,
                         kd_ratio={"_component_": CONSTANT, "value": 0.5},
                         **{"kd_loss.temperature": {"_component_": CONSTANT, "value": 1.0}}))
    plain, scheduled = metrics(plain_dir / "out"), metrics(scheduled_dir / "out")
    assert [r["loss"] for r in scheduled] == [r["loss"] for r in plain]
    assert "kd_ratio" not in scheduled[0]  # nothing changes, nothing extra is logged


def test_scheduled_kd_ratio_and_temperature_are_applied_logged_and_resumed(tmp_path, tiny_dirs):
    common = {"max_steps_per_epoch": 4, "save_every_n_steps": 2, "keep_last_n_checkpoints": None}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tiny_config(run_dir, *tiny_dirs, **common, kd_ratio={"_component_": LINEAR, "start": 0.2, "end": 0.8},
                      **{"kd_loss.temperature": {"_component_": LINEAR, "start": 2.0, "end": 1.0}})
    tune_run(cfg)
    records = {r["step"]: r for r in metrics(run_dir / "out")}
    # four steps, the last at the end value: progress 0, 1/3, 2/3, 1 (hand-computed)
    assert [records[s]["kd_ratio"] for s in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert [records[s]["kd_temperature"] for s in (1, 2, 3, 4)] == pytest.approx([2.0, 5 / 3, 4 / 3, 1.0])
    for r in records.values():  # the objective used this step's ratio
        assert r["loss"] == pytest.approx((1 - r["kd_ratio"]) * r["class_loss"] + r["kd_ratio"] * r["kd_loss"])

    # step 1 of the schedule is a constant run at its first values
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    tune_run(tiny_config(first_dir, *tiny_dirs, max_steps_per_epoch=1, save_every_n_steps=None, kd_ratio=0.2,
                         **{"kd_loss.temperature": 2.0}))
    first = metrics(first_dir / "out")[0]
    assert first["kd_loss"] == pytest.approx(records[1]["kd_loss"], rel=1e-6)
    assert first["loss"] == pytest.approx(records[1]["loss"], rel=1e-6)

    # resumed from step_2, the schedule goes on at steps 3 and 4 as in the uninterrupted run
    out = run_dir / "out"
    for name in ("step_4", "final"):
        shutil.rmtree(out / name)
    log = out / "logs" / "metrics.jsonl"
    log.write_text("".join(l + "\n" for l in log.read_text().splitlines()[:2]))
    tune_run(cfg, "resume_from_checkpoint=True")
    resumed = {r["step"]: r for r in metrics(out)}
    for s in (3, 4):
        assert resumed[s]["kd_ratio"] == pytest.approx(records[s]["kd_ratio"])
        assert resumed[s]["kd_temperature"] == pytest.approx(records[s]["kd_temperature"])
        assert resumed[s]["loss"] == pytest.approx(records[s]["loss"], rel=1e-5, abs=1e-6)
