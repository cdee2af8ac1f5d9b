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
