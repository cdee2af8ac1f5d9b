"""On-policy distillation (``on_policy`` block) through `tune run` on tiny models: lmbda 0 is
the off-policy recipe, on-policy losses recomputed independently (transformers' models, a
float64 JSD) from the logged samples, samples and losses through a kill and a resume, and bad
input refused before training."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.conftest import REPO, SINGLE_DEVICE, clean_env, metrics, tiny_config, tune_run
from tests.reference import jsd64

KEYS = ("loss", "class_loss", "kd_loss", "grad_norm")
ON_POLICY = {"lmbda": 0.5, "max_new_tokens": 6, "temperature": 1.0, "top_k": 50, "log_samples": True}


def test_lmbda_zero_reproduces_the_off_policy_run(tmp_path, tiny_dirs):
    common = {"max_steps_per_epoch": 2, "save_every_n_steps": None}
    (tmp_path / "off").mkdir(), (tmp_path / "zero").mkdir()
    tune_run(tiny_config(tmp_path / "off", *tiny_dirs, **common))
    tune_run(tiny_config(tmp_path / "zero", *tiny_dirs, **common, on_policy={**ON_POLICY, "lmbda": 0.0}))
    off, zero = metrics(tmp_path / "off" / "out"), metrics(tmp_path / "zero" / "out")
    assert len(off) == len(zero) == 2
    for a, b in zip(off, zero):
        assert {k: b[k] for k in KEYS} == {k: a[k] for k in KEYS}  # exactly
        assert b["on_policy"] == 0 and b["generated_tokens"] == 0
    assert not (tmp_path / "zero" / "out" / "logs" / "samples.jsonl").exists()


def _samples(out):
    return [json.loads(l) for l in (out / "logs" / "samples.jsonl").read_text().splitlines()]


@torch.no_grad()
def _recomputed_step(student_dir, teacher_dir, rows):
    """The step's (CE, KD): a float64 JSD (beta 0.5) at every generated token, student and
    teacher run by transformers on prompt + generated tokens, averaged over the tokens."""
    student = LlamaForCausalLM.from_pretrained(str(student_dir)).eval()
    teacher = LlamaForCausalLM.from_pretrained(str(teacher_dir)).eval()
    values = []
    for r in rows:
        seq = torch.tensor([r["prompt"] + r["generated"]])
        p, n = len(r["prompt"]), len(r["generated"])
        at = slice(p - 1, p - 1 + n)  # the positions that predict the generated tokens
        values.append(jsd64(student(seq).logits[0, at], teacher(seq).logits[0, at], beta=0.5))
    return torch.cat(values).mean().item()


def test_on_policy_losses_recomputed_and_reproduced_through_a_kill_and_resume(tmp_path, tiny_dirs):
    teacher, student = tiny_dirs
    common = {"max_steps_per_epoch": 4, "save_every_n_steps": 1, "keep_last_n_checkpoints": None,
              "on_policy": ON_POLICY}
    (tmp_path / "full").mkdir()
    tune_run(tiny_config(tmp_path / "full", teacher, student, **common))
    out = tmp_path / "full" / "out"
    ref, samples = metrics(out), _samples(out)
    assert [r["step"] for r in ref] == [1, 2, 3, 4]
    kinds = [r["on_policy"] for r in ref]
    assert set(kinds) == {0.0, 1.0}, kinds  # this seed draws both kinds of step
    for r in ref:
        rows = [s for s in samples if s["step"] == r["step"]]
        if not r["on_policy"]:
            assert not rows and r["generated_tokens"] == 0
            continue
        assert len(rows) == 2 and r["generated_tokens"] == sum(len(s["generated"]) for s in rows)
        for s in rows:  # at most max_new_tokens, ending at <|im_end|>/<|endoftext|> or at the budget
            assert 1 <= len(s["generated"]) <= 6 and s["by"] == "student"
            assert all(t not in (2, 0) for t in s["generated"][:-1]) or len(s["generated"]) == 6
        # the step's student: the previous step's checkpoint (the initial student before step 1)
        before = student if r["step"] == 1 else out / f"step_{r['step'] - 1}"
        kd = _recomputed_step(before, teacher, rows)
        assert r["kd_loss"] == pytest.approx(kd, rel=1e-4), r["step"]
        assert r["class_loss"] == 0 and r["loss"] == pytest.approx(0.5 * kd, rel=1e-4)  # no CE on generated

    # the same run killed once its first checkpoint is on disk, then resumed
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    cfg = tiny_config(run_dir, teacher, student, **common)
    proc = subprocess.Popen([sys.executable, "-m", "torchtune._cli.tune", "run", SINGLE_DEVICE, "--config", str(cfg)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_out = run_dir / "out"
    deadline = time.time() + 300
    while not (killed_out / "step_1").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name.split("_")[1]) for p in killed_out.glob("step_*"))
    assert steps and steps[-1] < 4, "the run finished before it could be killed"
    tune_run(cfg, "resume_from_checkpoint=True")
    got = metrics(killed_out)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref, got):
        assert b["on_policy"] == a["on_policy"]
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    # the same samples, each step's once (the killed run's partial step dropped on resume)
    assert _samples(killed_out) == samples


def test_prompts_that_do_not_fit_are_refused_before_training(tmp_path, tiny_dirs):
    # the first Dolly row's prompt is 39 tokens (system prompt included): no room within 40
    cfg = tiny_config(tmp_path, *tiny_dirs, **{"tokenizer.max_seq_len": 40,
                                               "on_policy": {**ON_POLICY, "max_new_tokens": 8}})
    proc = tune_run(cfg, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "have a prompt longer than tokenizer.max_seq_len=40 allows with room to generate" in out, out[-3000:]
    assert "Student model" not in out and not (tmp_path / "out" / "logs" / "metrics.jsonl").read_text()
    # a setting that cannot work is refused before the data is even read
    proc = tune_run(tiny_config(tmp_path, *tiny_dirs, on_policy={"lmbda": 0.5, "max_new_tokens": 0}), check=False)
    assert proc.returncode != 0 and "on_policy.max_new_tokens must be an integer >= 1, got 0" in proc.stderr


def test_two_ranks_generate_in_step_with_different_budgets(tmp_path, tiny_dirs):
    """FSDP2 on 2 gloo ranks: prompts of 29 to 39 tokens within max_seq_len 48 leave each row 9 to
    16 tokens, so one rank's rows stop before the other's; every rank keeps stepping (each
    forward of a sharded model is a collective) and the run completes."""
    from tests.recipes.test_jsd_distill_distributed import tune_run_distributed

    cfg = tiny_config(tmp_path, *tiny_dirs, **{
        "tokenizer.max_seq_len": 48, "max_steps_per_epoch": 2, "save_every_n_steps": None,
        "on_policy": {**ON_POLICY, "lmbda": 1.0, "max_new_tokens": 16}})
    tune_run_distributed(cfg)
    m = metrics(tmp_path / "out")
    assert [r["on_policy"] for r in m] == [1.0, 1.0] and all(r["class_loss"] == 0 for r in m)
    rows = _samples(tmp_path / "out")  # rank 0's
    assert len(rows) == 4 and all(len(r["prompt"]) + len(r["generated"]) <= 48 for r in rows)
