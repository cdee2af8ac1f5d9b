"""`tune run` end to end on tiny random SmolLM2-architecture models with the real tokenizer."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice
from tests.conftest import (
    DOLLY, QUICK, REPO, SINGLE_DEVICE, TINY, TINY_MODEL, clean_env, metrics, tiny_config, tune_run, write_tiny_hf_dir,
)

def test_loss_falls_when_overfitting_one_batch(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs, **{
        "dataset.max_rows": 2, "shuffle": False, "max_steps_per_epoch": 1, "epochs": 25,
        "optimizer.lr": 2e-2, "save_every_n_steps": None, "lr_scheduler.num_warmup_steps": 0,
        # pure distillation: the random tiny teacher disagrees with the labels, so CE and KD
        # would pull apart; with kd_ratio 1 the student must move onto the teacher
        "kd_ratio": 1.0,
    })
    tune_run(cfg)
    m = metrics(tmp_path / "out")
    assert len(m) == 25
    losses = [r["loss"] for r in m]
    assert max(losses[-3:]) < 0.75 * losses[0], losses
    assert m[-1]["loss"] == pytest.approx(m[-1]["kd_loss"])
    for key in ("class_loss", "kd_loss", "lr", "grad_norm", "tokens_per_second", "peak_memory_gib"):
        assert all(k in r for r in m for k in [key])


def test_checkpoint_is_a_loadable_hf_model(tmp_path, tiny_dirs):
    tune_run(tiny_config(tmp_path, *tiny_dirs))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["final", "logs", "step_2", "step_4"]
    final = LlamaForCausalLM.from_pretrained(str(out / "final")).eval()
    step4 = LlamaForCausalLM.from_pretrained(str(out / "step_4")).eval()
    start = LlamaForCausalLM.from_pretrained(str(tiny_dirs[1])).eval()
    tokens = torch.randint(0, 49152, (1, 12))
    with torch.no_grad():
        assert torch.equal(final(tokens).logits, step4(tokens).logits)
        assert not torch.allclose(final(tokens).logits, start(tokens).logits)
    assert (out / "final" / "tokenizer.json").is_file()
    assert json.loads((out / "final" / "config.json").read_text())["num_hidden_layers"] == TINY["num_layers"]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path, tiny_dirs):
    overrides = {"max_steps_per_epoch": 6, "save_every_n_steps": 1, "dataset.max_rows": 12}
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    tune_run(tiny_config(full_dir, *tiny_dirs, **overrides))
    reference = {r["step"]: r["loss"] for r in metrics(full_dir / "out")}
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    # a real kill: SIGKILL as soon as the first checkpoint appears
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    cfg = tiny_config(run_dir, *tiny_dirs, **overrides)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchtune._cli.tune", "run", SINGLE_DEVICE,
         "--config", str(cfg)], cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    out = run_dir / "out"
    deadline = time.time() + 300
    while not (out / "step_1").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name.split("_")[1]) for p in out.glob("step_*"))
    assert steps and steps[-1] < 6, "the run finished before it could be killed"
    for s in steps:  # every checkpoint on disk is complete (atomic writes)
        assert (out / f"step_{s}" / "recipe_state.pt").is_file()
        LlamaForCausalLM.from_pretrained(str(out / f"step_{s}"))

    tune_run(cfg, "resume_from_checkpoint=True")
    resumed = {r["step"]: r["loss"] for r in metrics(out)}
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(steps[-1] + 1, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_fused_linear_kd_matches_chunked_kd(tmp_path, tiny_dirs):
    common = {"max_steps_per_epoch": 2, "save_every_n_steps": None, "shuffle": False}
    a, b = tmp_path / "chunked", tmp_path / "fused"
    a.mkdir(), b.mkdir()
    tune_run(tiny_config(a, *tiny_dirs, **common))
    fused = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "chunk_size": 16, "return_ce": True}
    tune_run(tiny_config(b, *tiny_dirs, **common, kd_loss=fused))
    for ra, rb in zip(metrics(a / "out"), metrics(b / "out")):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), key


def test_a_divergence_component_trains_in_the_chunked_and_the_fused_loss(tmp_path, tiny_dirs):
    """A nested ``divergence: {_component_: ...}`` node builds; both forms give the same run."""
    common = {"max_steps_per_epoch": 2, "save_every_n_steps": None, "shuffle": False}
    divergence = {"_component_": "jsd_loss.AlphaBetaDivergence", "alpha": 0.6, "beta": 0.3}
    forms = {
        "chunked": {"_component_": "jsd_loss.DistillWithChunkedOutputLoss", "num_output_chunks": 1,
                    "temperature": 1.5, "divergence": divergence},
        "fused": {"_component_": "jsd_loss.FusedLinearDivergenceLoss", "chunk_size": 16, "return_ce": True,
                  "temperature": 1.5, "divergence": divergence},
    }
    for name, kd_loss in forms.items():
        (tmp_path / name).mkdir()
        tune_run(tiny_config(tmp_path / name, *tiny_dirs, **common, kd_loss=kd_loss))
    a, b = metrics(tmp_path / "chunked" / "out"), metrics(tmp_path / "fused" / "out")
    assert len(a) == len(b) == 2 and all(r["kd_loss"] > 0 for r in a)
    for ra, rb in zip(a, b):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), key


@pytest.mark.parametrize("kd_loss", ["chunked", "fused"])
def test_bf16_training_is_finite(tmp_path, tiny_dirs, kd_loss):
    fused = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "return_ce": True}
    overrides = {"dtype": "bf16", "max_steps_per_epoch": 2, "save_every_n_steps": None}
    if kd_loss == "fused":
        overrides["kd_loss"] = fused
    tune_run(tiny_config(tmp_path, *tiny_dirs, **overrides))
    m = metrics(tmp_path / "out")
    assert len(m) == 2 and all(0 < r["kd_loss"] <= 0.6932 and r["class_loss"] > 0 for r in m)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_dirs):
    """2 batches of 2 accumulated == 1 batch of 4: losses and gradients are token-weighted
    over the whole step (the stock recipe averages per batch, then divides again)."""
    common = {"max_steps_per_epoch": 3, "save_every_n_steps": None}
    a, b = tmp_path / "big", tmp_path / "accum"
    a.mkdir(), b.mkdir()
    tune_run(tiny_config(a, *tiny_dirs, **common, batch_size=4))
    tune_run(tiny_config(b, *tiny_dirs, **common, batch_size=2, gradient_accumulation_steps=2))
    big, accum = metrics(a / "out"), metrics(b / "out")
    assert len(big) == len(accum) == 3
    for ra, rb in zip(big, accum):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["step"], key)


def test_packed_rows_train_the_same_step_as_the_rows_unpacked(tmp_path, tiny_dirs):
    """``dataset.packed=True``: each step takes every row (all packs, or all rows padded), so
    both runs train the same tokens and must give the same token-weighted losses and gradients,
    two epochs running."""
    from jsd_loss.datasets import dolly_dataset
    from jsd_loss.models.smollm2 import smollm2_tokenizer

    rows = 8
    # no system prompt and trained prompts: each row's first label is a token, which packing must ignore
    tokenizer = smollm2_tokenizer(str(tiny_dirs[0] / "tokenizer.json"), max_seq_len=256, default_system_prompt=None)
    packs = len(dolly_dataset(tokenizer, source=str(DOLLY), max_rows=rows, train_on_input=True, packed=True))
    assert packs < rows
    common = {"tokenizer.max_seq_len": 256, "tokenizer.default_system_prompt": None, "dataset.train_on_input": True,
              "dataset.max_rows": rows, "epochs": 2, "max_steps_per_epoch": None, "save_every_n_steps": None,
              "lr_scheduler.num_warmup_steps": 0}
    a, b = tmp_path / "rows", tmp_path / "packed"
    a.mkdir(), b.mkdir()
    tune_run(tiny_config(a, *tiny_dirs, **common, batch_size=rows))
    proc = tune_run(tiny_config(b, *tiny_dirs, **common, batch_size=packs, **{"dataset.packed": True}))
    assert "Packing dataset" in proc.stderr
    ref, got = metrics(a / "out"), metrics(b / "out")
    assert [r["step"] for r in got] == [1, 2]
    for ra, rb in zip(ref, got):
        for key in ("loss", "class_loss", "kd_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["step"], key)
    assert got[1]["loss"] != got[0]["loss"]
    LlamaForCausalLM.from_pretrained(str(b / "out" / "final"))


# a LoRA student's run, merged HF checkpoints and exact resume:
# tests/recipes/test_reliability.py::test_a_killed_lora_student_resumes_exactly


def test_bad_inputs_fail_fast_with_clear_errors(tmp_path, tiny_dirs, teacher_dir):
    teacher, student = tiny_dirs
    other_vocab = write_tiny_hf_dir(tmp_path / "other_vocab", vocab_size=49153)
    untied = write_tiny_hf_dir(tmp_path / "untied", tokenizer_from=teacher_dir)
    hf_cfg = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**hf_cfg, "tie_word_embeddings": False}))
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text(json.dumps({"instruction": "hi", "context": "", "response": "x", "category": "open_qa"})
                        + "\n" + json.dumps({"instruction": "hi", "context": ""}) + "\n")
    cases = [
        ({"student_dir": str(tmp_path / "missing")}, "model directory not found"),
        ({"teacher_dir": str(other_vocab)}, "vocab mismatch"),
        ({"dataset.source": str(bad_rows)}, "row 2 lacks the field 'response'"),
        ({"dataset.source": str(tmp_path / "none.jsonl")}, "dataset file not found"),
        ({"kd_ratio": 1.5}, "kd_ratio must be in [0, 1]"),
        # stock keys that are not implemented, and students that could not be saved
        ({"compile": True}, "compile=True is not supported by this recipe"),
        ({"profiler": {"enabled": True}}, "profiler={'enabled': True} is not supported by this recipe"),
        ({"checkpointer.model_type": "QWEN2"}, "cannot save a checkpointer.model_type=QWEN2 student"),
        # a tied model config against an untied checkpoint (the converter's own refusal of untied
        # students: tests/jsd_loss/training/test_families.py)
        ({"student_dir": str(untied)}, "the student model config builds an output projection tied to the token "
                                       f"embeddings (ContiguousTiedLinear); {untied}/config.json has tie_word_embeddings=False"),
    ]
    # the first through `tune run` (the message reaches the user), the others in this process (each
    # `tune run` costs ~5 s of start-up): constructing the recipe and its setup must raise
    for i, (overrides, message) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        cfg = tiny_config(d, teacher, student, **overrides)
        if i == 0:
            proc = tune_run(cfg, check=False)
            assert proc.returncode != 0 and message in proc.stderr + proc.stdout, (message, proc.stderr[-2000:])
        else:
            with pytest.raises((ValueError, FileNotFoundError)) as raised:
                parsed = OmegaConf.load(cfg)
                KDRecipeSingleDevice(parsed).setup(parsed)
            assert message in str(raised.value), (message, str(raised.value))
        assert not list((d / "out").glob("step_*")) and not (d / "out" / "final").exists()


BUILT = "num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=1, head_dim=8, intermediate_dim=48, vocab=49152"
DESCRIBED = "num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_dim=64, vocab=49152"


@pytest.mark.parametrize("key", ["model", "teacher_model"])
def test_a_model_config_of_another_shape_is_refused_before_anything_loads(tmp_path, tiny_dirs, key):
    """A config built for another pruning (MLP 48 wide, one KV head) against the tiny checkpoint."""
    cfg = tiny_config(tmp_path, *tiny_dirs, **{key: {**TINY_MODEL, "intermediate_dim": 48, "num_kv_heads": 1}})
    proc = tune_run(cfg, check=False)
    out = proc.stdout + proc.stderr
    who, ckpt = ("student", tiny_dirs[1]) if key == "model" else ("teacher", tiny_dirs[0])
    assert proc.returncode != 0
    assert (f"the {who} model config does not build the model of its checkpoint (num_kv_heads 1 vs 2; "
            f"intermediate_dim 48 vs 64): the config builds {BUILT}; {ckpt}/config.json describes {DESCRIBED}") in out
    assert "Loss is initialized" not in out and not (tmp_path / "out").exists()


def test_checkpoints_go_to_the_checkpointers_output_dir(tmp_path, tiny_dirs):
    ckpts = tmp_path / "ckpts"
    cfg = tiny_config(tmp_path, *tiny_dirs, **{"checkpointer.output_dir": str(ckpts), "max_steps_per_epoch": 2,
                                               "log_peak_memory_stats": False})
    tune_run(cfg)
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_2"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs"]
    m = metrics(tmp_path / "out")
    assert len(m) == 2 and "peak_memory_gib" not in m[0] and "tokens_per_second" in m[0]
    LlamaForCausalLM.from_pretrained(str(ckpts / "final"))
    proc = tune_run(cfg, check=False)  # the earlier run is looked for there too
    assert proc.returncode != 0 and f"{ckpts} already holds a run (final, step_2)" in proc.stderr + proc.stdout


def test_an_earlier_run_is_never_overwritten_silently(tmp_path, tiny_dirs):
    cfg = tiny_config(tmp_path, *tiny_dirs)
    (tmp_path / "out" / "final").mkdir(parents=True)
    (tmp_path / "out" / "final" / "keep.txt").write_text("earlier run")
    proc = tune_run(cfg, check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr + proc.stdout
    assert (tmp_path / "out" / "final" / "keep.txt").read_text() == "earlier run"
    # overwrite_output=True replaces it only once setup has succeeded: a bad dataset loses nothing
    proc = tune_run(cfg, "overwrite_output=True", f"dataset.source={tmp_path / 'none.jsonl'}", check=False)
    assert proc.returncode != 0 and "dataset file not found" in proc.stderr + proc.stdout
    assert (tmp_path / "out" / "final" / "keep.txt").read_text() == "earlier run"
    tune_run(cfg, "overwrite_output=True", "max_steps_per_epoch=1")
    assert not (tmp_path / "out" / "final" / "keep.txt").exists()
    assert (tmp_path / "out" / "final" / "config.json").is_file() and len(metrics(tmp_path / "out")) == 1


def test_stock_torchtune_kd_recipe_accepts_our_loss_unchanged(tmp_path, tiny_dirs):
    """Drop-in proof: torchtune's own knowledge_distillation_single_device with our kd_loss."""
    teacher, student = tiny_dirs
    cfg = OmegaConf.create({
        "output_dir": str(tmp_path / "out"),
        "model": {"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
                  "apply_lora_to_mlp": False, "lora_rank": 4, "lora_alpha": 8, **TINY},
        "teacher_model": dict(TINY_MODEL),
        "tokenizer": {"_component_": "jsd_loss.models.smollm2.smollm2_tokenizer",
                      "path": str(teacher / "tokenizer.json"), "max_seq_len": 64},
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(student),
                         "checkpoint_files": ["model.safetensors"], "model_type": "LLAMA3_2",
                         "output_dir": str(tmp_path / "out")},
        "teacher_checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                                 "checkpoint_dir": str(teacher), "checkpoint_files": ["model.safetensors"],
                                 "model_type": "LLAMA3_2", "output_dir": str(tmp_path / "out")},
        "resume_from_checkpoint": False,
        "dataset": {"_component_": "jsd_loss.datasets.dolly_dataset", "source": str(DOLLY), "max_rows": 8},
        "seed": 0, "shuffle": True, "batch_size": 2,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 0},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "kd_loss": {"_component_": "jsd_loss.JSDistillWithChunkedOutputLoss", "num_output_chunks": 8},
        "kd_ratio": 0.5, "epochs": 1, "max_steps_per_epoch": 2, "gradient_accumulation_steps": 1,
        "compile": False, "device": "cpu", "dtype": "fp32", "enable_activation_checkpointing": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": str(tmp_path / "out" / "logs")},
        "log_every_n_steps": 1, "log_peak_memory_stats": False,
    })
    path = tmp_path / "stock.yaml"
    OmegaConf.save(cfg, path)
    tune_run(path, recipe="knowledge_distillation_single_device")
    log_text = "".join(p.read_text() for p in (tmp_path / "out" / "logs").glob("*.txt"))
    assert "kd_loss" in log_text
    assert (tmp_path / "out" / "epoch_0").is_dir()


@pytest.mark.slow
def test_real_teacher_and_student_few_steps(tmp_path, teacher_dir):
    from dataclasses import replace

    from jsd_loss.prepare import prepare_student
    from jsd_loss.prepare._student import DEFAULT_PLAN
    from jsd_loss.pruning import PruningPlan

    # the default student's shape (fewer calibration rows: the shape does not depend on them), which
    # the shipped config's smollm2_90m must build; the old 17-layer student is refused by shape
    plan = replace(DEFAULT_PLAN, calibration_rows=16, calibration_max_seq_len=64)
    student = prepare_student(teacher_dir, tmp_path / "student", plan)
    even = prepare_student(teacher_dir, tmp_path / "even", PruningPlan(method="even", num_layers=17))
    cfg = OmegaConf.load(QUICK)
    cfg.output_dir = str(tmp_path / "refused")
    cfg.teacher_dir, cfg.student_dir = str(teacher_dir), str(even)
    path = tmp_path / "even.yaml"
    OmegaConf.save(cfg, path)
    proc = tune_run(path, check=False)
    assert proc.returncode != 0
    assert "num_layers 30 vs 17" in proc.stderr and "intermediate_dim 648 vs 1536" in proc.stderr
    assert not (tmp_path / "refused").exists()
    cfg = OmegaConf.load(QUICK)
    cfg.output_dir = str(tmp_path / "out")
    cfg.teacher_dir, cfg.student_dir = str(teacher_dir), str(student)
    cfg.dataset.source = str(DOLLY)
    cfg.tokenizer.max_seq_len = 96
    cfg.batch_size = 1
    cfg.max_steps_per_epoch = 2
    cfg.save_every_n_steps = None
    path = tmp_path / "real.yaml"
    OmegaConf.save(cfg, path)
    tune_run(path)
    m = metrics(tmp_path / "out")
    assert len(m) == 2
    assert all(0 < r["kd_loss"] <= 0.6932 for r in m)  # JSD at beta 0.5 is bounded by ln 2
    LlamaForCausalLM.from_pretrained(str(tmp_path / "out" / "final"))
