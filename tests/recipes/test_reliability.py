"""What a run survives: malicious or corrupt checkpoints, non-finite steps, kills during a
save, changed configs on resume (tiny random models, ``tune run`` end to end)."""

import shutil

from tests.conftest import tiny_config, tune_run
from tests.jsd_loss.training.test_checkpoint import plant_payload


def test_resume_refuses_a_planted_pickle_without_running_it(tmp_path, tiny_dirs):
    out = tmp_path / "out"
    shutil.copytree(tiny_dirs[1], out / "step_1")  # a complete HF checkpoint beside the payload
    marker = tmp_path / "marker"
    plant_payload(out / "step_1", marker)
    proc = tune_run(tiny_config(tmp_path, *tiny_dirs), "resume_from_checkpoint=True", "seed=0", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"refusing to resume from {out / 'step_1' / 'recipe_state.pt'}: it holds the global posix.system" in text
    assert not marker.exists()
    assert "Student model" not in text  # refused before any model was built
