"""What a run survives: malicious or corrupt checkpoints, non-finite steps, kills during a
save, changed configs on resume (tiny random models, ``tune run`` end to end)."""

import shutil
import signal
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from jsd_loss.checkpointing import load_state_dict, verify_directory
from jsd_loss.training import latest_checkpoint
from tests.conftest import REPO, SINGLE_DEVICE, TINY, clean_env, metrics, tiny_config, tune_run
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


# three steps of two rows, in dataset order, a checkpoint after each
STEPS = {"shuffle": False, "batch_size": 2, "max_steps_per_epoch": 3, "save_every_n_steps": 1,
         "dataset.max_rows": 8, "lr_scheduler.num_warmup_steps": 0}
NAN_LOSS = {"_component_": "tests.recipes.faults.CENaNOnCalls", "num_output_chunks": 1}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_dirs):
    """The reference: the same three steps with no fault."""
    root = tmp_path_factory.mktemp("clean")
    tune_run(tiny_config(root, *tiny_dirs, **STEPS))
    return root / "out"


def adam_steps(step_dir):
    state = torch.load(step_dir / "recipe_state.pt", weights_only=True)["optimizer"]["state"]
    return {int(s["step"]) for s in state.values()}


def assert_same_weights(a, b):
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7, msg=k)


def test_a_non_finite_step_is_skipped_before_it_reaches_the_weights(tmp_path, tiny_dirs, clean_run):
    proc = tune_run(tiny_config(tmp_path, *tiny_dirs, **STEPS, loss={**NAN_LOSS, "nan_calls": [3]}))
    out = tmp_path / "out"
    assert "step 3: non-finite loss nan or gradient norm nan: skipped" in proc.stderr + proc.stdout
    # the run without step 3's update: the clean run after step 2 (and the clean step 3 differs)
    assert_same_weights(out / "final", clean_run / "step_2")
    with pytest.raises(AssertionError):
        assert_same_weights(out / "final", clean_run / "final")
    assert adam_steps(out / "step_3") == {2} and adam_steps(clean_run / "step_3") == {3}
    got, ref = metrics(out), metrics(clean_run)
    assert [r["skipped_steps"] for r in got] == [0, 0, 1]
    for a, b in zip(got[:2], ref[:2]):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]


def test_too_many_non_finite_steps_stop_the_run(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs, **STEPS, loss={**NAN_LOSS, "nan_calls": [1, 2]}, max_skipped_steps=1)
    proc = tune_run(cfg, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "step 1: non-finite loss nan or gradient norm nan: skipped" in text
    assert "step 2: non-finite loss nan or gradient norm nan: 2 non-finite steps, more than max_skipped_steps=1" in text
    assert not (tmp_path / "out" / "final").exists()
    assert_same_weights(tmp_path / "out" / "step_1", tiny_dirs[1])  # the skipped step left the student as it was


def test_empty_micro_batches_contribute_nothing(tmp_path, tiny_dirs, clean_run):
    """Every second micro-batch has no trained label; accumulating two per step must give the
    clean run's steps exactly (not 0/0 = NaN gradients, not a skipped step)."""
    tune_run(tiny_config(tmp_path, *tiny_dirs, **STEPS, gradient_accumulation_steps=2,
                         **{"dataset._component_": "tests.recipes.faults.dolly_with_empty_batches"}))
    got, ref = metrics(tmp_path / "out"), metrics(clean_run)
    assert [r["skipped_steps"] for r in got] == [0, 0, 0]
    for a, b in zip(got, ref):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["step"], key)
    assert_same_weights(tmp_path / "out" / "final", clean_run / "final")


def test_only_the_last_step_checkpoints_are_kept(clean_run):
    # keep_last_n_checkpoints defaults to 2: step_1 went once step_3 was complete
    assert sorted(p.name for p in clean_run.iterdir()) == ["final", "logs", "step_2", "step_3"]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_resumable(tmp_path, tiny_dirs, clean_run):
    cfg = tiny_config(tmp_path, *tiny_dirs, **STEPS)
    proc = subprocess.run(  # SIGKILLed with step_3's weights half written
        [sys.executable, "-m", "tests.recipes.faults", "kill-during-save", "3", "run", SINGLE_DEVICE,
         "--config", str(cfg)],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    out = tmp_path / "out"
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["logs", "step_1", "step_2"]
    assert [p.name[: len(".step_3.tmp-")] for p in out.glob(".*")] == [".step_3.tmp-"]  # the half-written one
    assert_same_weights(out / "step_2", clean_run / "step_2")

    tune_run(cfg, "resume_from_checkpoint=True")
    assert_same_weights(out / "final", clean_run / "final")
    assert metrics(out)[2]["loss"] == pytest.approx(metrics(clean_run)[2]["loss"], rel=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["final", "logs", "step_2", "step_3"]  # leftover removed


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, tiny_dirs, clean_run):
    cfg = tiny_config(tmp_path, *tiny_dirs, **STEPS)
    proc = subprocess.run(  # ENOSPC with step_3's weights half written
        [sys.executable, "-m", "tests.recipes.faults", "disk-full-during-save", "3", "run", SINGLE_DEVICE,
         "--config", str(cfg)], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    out = tmp_path / "out"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"OSError: [Errno 28] cannot write checkpoint {out / 'step_3'} (OSError: [Errno 28] No space left on device" in proc.stderr
    assert "nothing of it was kept, earlier checkpoints are untouched (is the disk full? " in proc.stderr
    # nothing half-written is left; no checkpoint was pruned for the one that failed
    assert sorted(p.name for p in out.iterdir()) == ["logs", "step_1", "step_2"]
    assert verify_directory(out / "step_2")  # its weights and recipe state, by their checksums
    assert_same_weights(out / "step_2", clean_run / "step_2")
    assert latest_checkpoint(out, seed=42)[0] == out / "step_2"  # what a resume would read (seed: the config's)


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, tiny_dirs, clean_run):
    shutil.copytree(clean_run, tmp_path / "out")
    cfg = tiny_config(tmp_path, *tiny_dirs, **{**STEPS, "batch_size": 4, "dataset.max_rows": 6})
    proc = tune_run(cfg, "resume_from_checkpoint=True", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"cannot resume from {tmp_path / 'out' / 'step_3'}: " in text
    assert "batch_size was 2, is 4 (the data order and the steps per epoch)" in text
    assert "'max_rows': 8" in text and "'max_rows': 6" in text
    assert "Student model" not in text  # refused before any model was built
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["final", "logs", "step_2", "step_3"]


ADAPTER_MODEL = {"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
                 "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, **TINY}
KILLED = {"metric_logger._component_": "tests.recipes.faults.KilledAtStep", "metric_logger.kill_at_step": 3}


def kill_and_resume(run, tmp_path, tiny_dirs, common, reference, dora):
    """``run`` (one device or two ranks) with ``common`` SIGKILLed after its step-3 update
    (step_2 its last checkpoint), resumed, and compared with the uninterrupted ``reference``
    run's output dir (same config): losses, grad norms, adapters and final weights."""
    cfg = tiny_config(tmp_path, *tiny_dirs, **common, **KILLED)
    proc = run(cfg, check=False)
    out = tmp_path / "out"
    assert proc.returncode != 0 and sorted(p.name for p in out.glob("step_*")) == ["step_1", "step_2"]
    assert len(metrics(out)) == 2  # step 3 trained, not logged, not saved

    run(cfg, "resume_from_checkpoint=True", "metric_logger._component_=jsd_loss.training.JSONLMetricLogger")
    got, want = metrics(out), metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(got) > 3
    for a, b in zip(got, want):
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-8), (a["step"], key)
    assert_same_weights(out / "final", reference / "final")
    last = f"step_{len(got)}"
    assert_same_weights(out / last, reference / last)
    saved, expected = (torch.load(d / last / "recipe_state.pt", weights_only=True)["adapters"] for d in (out, reference))
    assert sorted(saved) == sorted(expected) and any("magnitude" in k for k in saved) == dora
    for k, v in expected.items():
        torch.testing.assert_close(saved[k], v, rtol=1e-6, atol=1e-7, msg=k)
    # merged: standard HF directories, that transformers loads
    assert not any("lora" in k or "magnitude" in k for k in load_state_dict(out / "final"))
    LlamaForCausalLM.from_pretrained(str(out / last))


def test_a_killed_lora_student_resumes_exactly(tmp_path, tiny_dirs):
    """A LoRA student SIGKILLed mid-run and resumed gives the uninterrupted run's losses and
    final weights: the adapters and their AdamW moments come back, on the original frozen base
    (which the step checkpoints' merges must leave as it was). DoRA on two ranks:
    tests/recipes/test_jsd_distill_distributed.py::test_a_killed_dora_student_on_two_ranks_resumes_exactly."""
    common = {**STEPS, "max_steps_per_epoch": 4, "model": ADAPTER_MODEL, "lr_scheduler.num_warmup_steps": 1}
    (tmp_path / "ref").mkdir(), (tmp_path / "killed").mkdir()
    tune_run(tiny_config(tmp_path / "ref", *tiny_dirs, **common, keep_last_n_checkpoints=None))
    kill_and_resume(tune_run, tmp_path / "killed", tiny_dirs, common, tmp_path / "ref" / "out", dora=False)
