"""The recipes start from the repository root with no PYTHONPATH, through the `tune`
console script (whose sys.path does not begin with the working directory, unlike
`python -m`), and the thin entry points under recipes/ still reach them."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import DISTRIBUTED, EVAL, REPO, SINGLE_DEVICE, clean_env, metrics, tiny_config

TUNE = str(Path(sys.executable).with_name("tune"))


def _run(cmd, **env):
    return subprocess.run(cmd, cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=600)


def test_tune_run_needs_no_pythonpath(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs)
    proc = _run([TUNE, "run", SINGLE_DEVICE, "--config", str(cfg), "max_steps_per_epoch=1", "save_every_n_steps=null"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(metrics(tmp_path / "out")) == 1 and (tmp_path / "out" / "final" / "config.json").is_file()


def test_every_recipe_starts_without_pythonpath(tmp_path, tiny_dirs):
    """Each recipe module is found and reaches its own input checks (which then refuse)."""
    cfg = tiny_config(tmp_path, *tiny_dirs)
    cases = [
        ([TUNE, "run", "--nproc_per_node", "2", DISTRIBUTED, "--config", str(cfg), "kd_ratio=1.5"],
         "kd_ratio must be in [0, 1]"),
        ([TUNE, "run", EVAL, "--config", str(REPO / "configs/smollm2/eval_distill.yaml"), "students=[]",
          f"teacher.checkpoint_dir={tiny_dirs[0]}"], "no students to evaluate"),
    ]
    for cmd, message in cases:
        proc = _run(cmd, OMP_NUM_THREADS="1")
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (cmd, proc.stderr[-3000:])


def test_thin_entry_points_under_recipes_reach_the_package(tmp_path, tiny_dirs):
    """`python recipes/<name>.py` and the older `PYTHONPATH=. tune run recipes/<name>.py`."""
    cfg = tiny_config(tmp_path, *tiny_dirs)
    # PYTHONPATH=REPO makes the child import this checkout's jsd_loss whatever is installed
    for cmd in ([sys.executable, "recipes/jsd_distill_single_device.py", "--config", str(cfg), "kd_ratio=1.5"],
                [TUNE, "run", "recipes/jsd_distill_single_device.py", "--config", str(cfg), "kd_ratio=1.5"]):
        proc = _run(cmd, PYTHONPATH=str(REPO))
        assert proc.returncode != 0 and "kd_ratio must be in [0, 1]" in proc.stdout + proc.stderr, (
            cmd, proc.stderr[-3000:])
