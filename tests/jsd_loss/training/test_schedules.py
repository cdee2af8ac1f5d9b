import math

import pytest

from jsd_loss.training import ConstantSchedule, CosineSchedule, LinearSchedule, as_schedule


def test_linear_schedule_hand_computed():
    s = LinearSchedule(2.0, 1.0)
    assert [s(step, 11) for step in (0, 5, 10, 20)] == pytest.approx([2.0, 1.5, 1.0, 1.0])


def test_cosine_schedule_hand_computed():
    s = CosineSchedule(0.0, 1.0)
    # progress 0, 1/4, 1/2, 3/4, 1 over 5 steps; (1 - cos(pi p)) / 2, cos(pi/4) = 0.70710678
    assert [s(step, 5) for step in range(5)] == pytest.approx([0.0, 0.14644661, 0.5, 0.85355339, 1.0])


def test_schedule_warmup_then_hold_then_move():
    s = LinearSchedule(1.0, 0.0, warmup_steps=2, warmup_from=0.0)
    assert [s(step, 6) for step in range(6)] == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3, 0.0])
    h = CosineSchedule(2.0, 1.0, hold_steps=3)
    assert [h(step, 8) for step in (0, 2, 3, 5, 7, 100)] == pytest.approx([2.0, 2.0, 2.0, 1.5, 1.0, 1.0])


def test_schedule_is_a_function_of_the_step_so_a_resume_continues_it():
    s = CosineSchedule(2.0, 1.0, warmup_steps=3, hold_steps=2, warmup_from=4.0)
    fresh = [s(step, 30) for step in range(30)]
    resumed = [CosineSchedule(2.0, 1.0, warmup_steps=3, hold_steps=2, warmup_from=4.0)(step, 30) for step in range(12, 30)]
    assert resumed == fresh[12:]
    assert s.bounds() == (1.0, 4.0)


def test_as_schedule_reads_numbers_and_components_and_names_bad_values():
    assert as_schedule(0.5, "kd_ratio")(7, 10) == 0.5
    assert isinstance(as_schedule(1, "kd_ratio"), ConstantSchedule)
    node = {"_component_": "jsd_loss.training.LinearSchedule", "start": 0.2, "end": 0.8}
    assert as_schedule(node, "kd_ratio")(9, 10) == pytest.approx(0.8)
    for bad, message in [(True, "kd_ratio must be a number"), ("0.5", "kd_ratio must be a number"),
                         ({"_component_": "torch.nn.Identity"}, "is not a jsd_loss.training schedule")]:
        with pytest.raises(ValueError, match=message):
            as_schedule(bad, "kd_ratio")
    with pytest.raises(ValueError, match="warmup_steps must be a non-negative integer"):
        LinearSchedule(1.0, 0.0, warmup_steps=-1)
    with pytest.raises(ValueError, match=r"end=nan"):
        CosineSchedule(1.0, math.nan)


def test_kd_schedules_set_every_temperature_of_the_loss_and_refuse_what_cannot_work():
    from omegaconf import OmegaConf

    from jsd_loss import JSDistillWithChunkedOutputLoss
    from jsd_loss.training import KDSchedules

    cfg = OmegaConf.create({"kd_ratio": 0.5, "kd_loss": {
        "_component_": "jsd_loss.JSDistillWithChunkedOutputLoss", "num_output_chunks": 2,
        "temperature": {"_component_": "jsd_loss.training.LinearSchedule", "start": 3.0, "end": 1.0}}})
    schedules = KDSchedules(cfg)
    assert schedules.scheduled and schedules.kd_loss_config(cfg.kd_loss).temperature == 3.0
    loss = JSDistillWithChunkedOutputLoss(num_output_chunks=2, temperature=3.0)
    assert schedules.step(loss, 1, 3) == {"kd_ratio": 0.5, "kd_temperature": 2.0}
    temperatures = {m.temperature for m in loss.modules() if hasattr(m, "temperature")}
    assert temperatures == {2.0} and len([m for m in loss.modules() if hasattr(m, "temperature")]) >= 2

    for key, value, message in [
        ("kd_ratio", {"_component_": "jsd_loss.training.LinearSchedule", "start": 0.5, "end": 1.5}, "kd_ratio must be in"),
        ("kd_ratio", 1.5, r"kd_ratio must be in \[0, 1\], got 1.5"),
        ("kd_loss.temperature", {"_component_": "jsd_loss.training.LinearSchedule", "start": 1.0, "end": 0.0},
         "must stay > 0"),
        ("teacher_cache", "some/cache", "a teacher_cache holds the teacher's distributions at one temperature"),
    ]:
        bad = OmegaConf.create(OmegaConf.to_container(cfg))
        OmegaConf.update(bad, key, value, merge=False)
        with pytest.raises(ValueError, match=message):
            KDSchedules(bad)
    cached = OmegaConf.create({"kd_loss": {"temperature": {"_component_": "jsd_loss.training.LinearSchedule",
                                                           "start": 2.0, "end": 1.0}}})
    from jsd_loss.training import kd_temperature

    with pytest.raises(ValueError, match="one temperature"):
        kd_temperature(cached)
    assert kd_temperature(OmegaConf.create({"kd_loss": {"temperature": 2.0}})) == 2.0
