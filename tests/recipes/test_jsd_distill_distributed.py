"""`tune run --nproc_per_node 2` with FSDP2 on CPU (gloo) on tiny models."""

import shutil
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.checkpointing import load_state_dict
from tests.conftest import DISTRIBUTED, REPO, TINY, TINY_MODEL, clean_env, metrics, tiny_config, tune_run
from tests.recipes.test_reliability import kill_and_resume


# A gloo rank has once died with SIGABRT at the barrier of a checkpoint gather on a clean-clone run
# (1 failure in 8 runs of the same test, not reproduced since); such a run is retried once, from the
# same inputs, so that the transport's flake does not fail the suite. Any other failure is reported.
GLOO_ABORT = "exitcode  : -6"


def tune_run_distributed(config, *args, nproc=2, check=True):
    cmd = [sys.executable, "-m", "torchtune._cli.tune", "run", "--nproc_per_node", str(nproc),
           DISTRIBUTED, "--config", str(config), *args]

    def run():
        return subprocess.run(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=900)

    proc = run()
    if proc.returncode != 0 and GLOO_ABORT in proc.stderr and "resume_from_checkpoint=True" not in args:
        print(f"a rank aborted (SIGABRT); retrying once:\n{proc.stderr[-2000:]}", file=sys.stderr)
        shutil.rmtree(OmegaConf.load(config).output_dir, ignore_errors=True)  # the aborted run's partial output
        proc = run()
    if check and proc.returncode != 0:
        raise AssertionError(f"distributed run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# packed: 40 rows of at most 256 tokens make about 28 packs, sharded over the ranks
PACKED = {"dataset.packed": True, "tokenizer.max_seq_len": 256, "dataset.max_rows": 40}


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_two_ranks_match_single_device_at_same_global_batch_and_resume(tmp_path, tiny_dirs, packed):
    common = {"max_steps_per_epoch": 4, "save_every_n_steps": 2, "dataset.max_rows": 16, **(PACKED if packed else {})}
    single, dist = tmp_path / "single", tmp_path / "dist"
    single.mkdir(), dist.mkdir()
    tune_run(tiny_config(single, *tiny_dirs, **common, batch_size=4))
    tune_run_distributed(tiny_config(dist, *tiny_dirs, **common, batch_size=2))
    ref, got = metrics(single / "out"), metrics(dist / "out")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref, got):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    assert sorted(p.name for p in (dist / "out").iterdir()) == ["final", "logs", "step_2", "step_4"]

    # resume: the state a run killed right after its step-2 checkpoint leaves on disk
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    cfg = tiny_config(resumed, *tiny_dirs, **common, batch_size=2)
    (resumed / "out" / "logs").mkdir(parents=True)
    shutil.copytree(dist / "out" / "step_2", resumed / "out" / "step_2")
    lines = (dist / "out" / "logs" / "metrics.jsonl").read_text().splitlines()[:2]
    (resumed / "out" / "logs" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    tune_run_distributed(cfg, "resume_from_checkpoint=True")
    after = metrics(resumed / "out")
    assert [r["step"] for r in after] == [1, 2, 3, 4]
    for a, b in zip(got[2:], after[2:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_a_failing_start_gives_a_clear_error_and_no_checkpoint(tmp_path, tiny_dirs):
    teacher, _ = tiny_dirs
    cfg = tiny_config(tmp_path, teacher, tmp_path / "no_such_student")
    proc = tune_run_distributed(cfg, check=False)
    assert proc.returncode != 0
    assert "model directory not found" in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() or not [
        p for p in (tmp_path / "out").iterdir() if p.name.startswith(("step_", "final"))
    ]


def test_a_teacher_config_of_another_shape_is_refused_before_anything_loads(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs, teacher_model={**TINY_MODEL, "num_layers": 3})
    proc = tune_run_distributed(cfg, check=False)
    assert proc.returncode != 0
    assert ("the teacher model config does not build the model of its checkpoint (num_layers 3 vs 2): the config "
            "builds num_layers=3,") in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_one_rank_failing_at_start_stops_all_and_keeps_the_earlier_run(tmp_path, tiny_dirs):
    """Rank 1 fails while rank 0 goes on to load and shard the models: torchrun stops the
    job (no hang at rank 0's first collective), the error names the cause, and the run that
    overwrite_output=True would replace is untouched."""
    earlier = tmp_path / "out" / "final"
    earlier.mkdir(parents=True)
    (earlier / "keep.txt").write_text("earlier run")
    tokenizer = {"_component_": "tests.recipes.faults.tokenizer_failing_on_rank", "rank": 1,
                 "path": str(tiny_dirs[0] / "tokenizer.json"), "max_seq_len": 64}
    cfg = tiny_config(tmp_path, *tiny_dirs, tokenizer=tokenizer, overwrite_output=True)
    start = time.monotonic()
    proc = tune_run_distributed(cfg, check=False)
    assert proc.returncode != 0 and "injected failure on rank 1" in proc.stderr + proc.stdout
    assert time.monotonic() - start < 300
    assert (earlier / "keep.txt").read_text() == "earlier run"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != "logs") == ["final"]


FUSED = {"kd_loss": {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "chunk_size": 16,
                     "return_ce": True}}
LORA = {"model": {"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
                  "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, **TINY}}


# a DoRA student (LoRA's adapters and magnitudes), a checkpoint every step: the reference of
# the distributed kill-and-resume test as well
DORA = {"model": {**LORA["model"], "use_dora": True}, "max_steps_per_epoch": 4, "save_every_n_steps": 1,
        "keep_last_n_checkpoints": None, "lr_scheduler.num_warmup_steps": 1}


@pytest.fixture(scope="module")
def dora_dist(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("dora_dist")
    tune_run_distributed(tiny_config(root, *tiny_dirs, **DORA, batch_size=2))
    return root / "out"


@pytest.mark.parametrize("student", ["fused_linear_kd", "dora"])
def test_two_ranks_match_single_device(tmp_path, tiny_dirs, student, request):
    """Fused-linear KD (the output weight is used after FSDP2's forward) and a DoRA student
    (adapters initialised before sharding, magnitudes from the sharded weights): per-step
    statistics and the final merged HF weights equal the single-device run at the same global batch."""
    overrides = {"max_steps_per_epoch": 3, "save_every_n_steps": None, **FUSED} if student == "fused_linear_kd" else DORA
    single, dist = tmp_path / "single", tmp_path / "dist"
    single.mkdir(), dist.mkdir()
    tune_run(tiny_config(single, *tiny_dirs, **overrides, batch_size=4))
    if student == "dora":
        dist_out = request.getfixturevalue("dora_dist")
    else:
        tune_run_distributed(tiny_config(dist, *tiny_dirs, **overrides, batch_size=2))
        dist_out = dist / "out"
    ref, got = metrics(single / "out"), metrics(dist_out)
    assert [r["step"] for r in got] == list(range(1, overrides["max_steps_per_epoch"] + 1))
    for a, b in zip(ref, got):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    # (four shuffled DoRA steps at lr 1e-3 need not lower the loss: the weights must move)
    assert got[-1]["loss"] < got[0]["loss"] or student == "dora"
    ref_w, got_w = load_state_dict(single / "out" / "final"), load_state_dict(dist_out / "final")
    assert sorted(got_w) == sorted(ref_w) and not any("lora" in k or "magnitude" in k for k in got_w)
    start = load_state_dict(tiny_dirs[1])
    moved = [k for k in ref_w if k in start and not torch.equal(ref_w[k], start[k])]
    assert any("q_proj" in k for k in moved) and (student != "dora" or not any("k_proj" in k for k in moved))
    for k in ref_w:
        assert torch.allclose(got_w[k], ref_w[k], rtol=1e-4, atol=1e-6), k


def test_a_killed_dora_student_on_two_ranks_resumes_exactly(tmp_path, tiny_dirs, dora_dist):
    """Both ranks SIGKILLed (rank 0 by the fault, rank 1 by torchrun) after step 3 and resumed:
    the uninterrupted two-rank run's losses, adapters, magnitudes and final weights."""
    kill_and_resume(tune_run_distributed, tmp_path, tiny_dirs, {**DORA, "batch_size": 2}, dora_dist, dora=True)
