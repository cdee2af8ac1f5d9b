"""Mixed precision (``mixed_precision: bf16``, ``teacher_dtype``) and torchao's optimizers in the
distillation recipes, end to end on tiny models."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import training

from jsd_loss.checkpointing import load_state_dict
from jsd_loss.recipes.jsd_distill_distributed import KDRecipeDistributed
from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice
from tests.conftest import metrics, tiny_config, tune_run
from tests.recipes.test_jsd_distill_distributed import tune_run_distributed

CACHE = "jsd_loss/recipes/cache_teacher.py"
SHORT = {"max_steps_per_epoch": 3, "save_every_n_steps": None}
MIXED = {**SHORT, "mixed_precision": "bf16"}
FUSED = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "chunk_size": 16, "return_ce": True}


def _finite_steps(out, steps):
    m = metrics(out)
    assert [r["step"] for r in m] == list(range(1, steps + 1))
    assert all(math.isfinite(r[k]) for r in m for k in ("loss", "class_loss", "kd_loss", "grad_norm"))
    return m


def _moved(out, student_dir):
    """The saved student differs from where it started: the optimizer took steps."""
    start, final = load_state_dict(student_dir), load_state_dict(out / "final")
    return [k for k in final if not torch.equal(final[k].float(), start[k].float())]


@pytest.mark.parametrize("recipe", [KDRecipeSingleDevice, KDRecipeDistributed], ids=["single", "distributed"])
def test_combinations_that_cannot_work_are_refused_before_anything_is_built(tmp_path, tiny_dirs, recipe):
    """The recipes' constructors refuse them: no model is built, no weights or data read."""
    for keys, message in [({"mixed_precision": "bf16", "dtype": "bf16"}, "needs dtype: fp32, got dtype=bf16"),
                          ({"mixed_precision": "fp16"}, "mixed_precision=fp16 is not supported")]:
        cfg = OmegaConf.load(tiny_config(tmp_path, *tiny_dirs, **keys))
        with pytest.raises(ValueError, match=message):
            recipe(cfg)
    assert not (tmp_path / "out").exists()


def test_mixed_precision_with_a_bf16_teacher_alike_on_one_device_and_two_ranks(tmp_path, tiny_dirs):
    """Chunked JSD, bf16 autocast, bf16 teacher: 2 gloo ranks give the single-device steps
    (within 1e-4, as in fp32; measured 2e-6), and the student's saved weights are its fp32
    master weights."""
    overrides = {**MIXED, "teacher_dtype": "bf16"}
    single, dist = tmp_path / "single", tmp_path / "dist"
    single.mkdir(), dist.mkdir()
    proc = tune_run(tiny_config(single, *tiny_dirs, **overrides, batch_size=4))
    assert "Teacher model is initialized with precision torch.bfloat16" in proc.stdout + proc.stderr
    tune_run_distributed(tiny_config(dist, *tiny_dirs, **overrides, batch_size=2))
    ref, got = _finite_steps(single / "out", 3), _finite_steps(dist / "out", 3)
    for a, b in zip(ref, got):
        for key in ("loss", "class_loss", "kd_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    weights = load_state_dict(single / "out" / "final")
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_pure_bf16_with_torchao_stochastic_rounding_adamw(tmp_path, tiny_dirs):
    optimizer = {"_component_": "torchao.optim._AdamW", "lr": 1e-3, "weight_decay": 0.01,
                 "bf16_stochastic_round": True}
    tune_run(tiny_config(tmp_path, *tiny_dirs, **SHORT, dtype="bf16", optimizer=optimizer))
    _finite_steps(tmp_path / "out", 3)
    assert any("q_proj" in k for k in _moved(tmp_path / "out", tiny_dirs[1]))
    assert all(w.dtype == torch.bfloat16 for w in load_state_dict(tmp_path / "out" / "final").values())


def test_mixed_precision_with_a_teacher_cache_the_fused_loss_and_torchao_adamw8bit(tmp_path, tiny_dirs):
    """The cached teacher's top-k distributions into the fused loss under bf16 autocast, with
    ``optimizer._component_: torchao.optim.AdamW8bit``: it takes steps, and its 8-bit state is
    saved with the step-2 checkpoint and loads back."""
    optimizer = {"_component_": "torchao.optim.AdamW8bit", "lr": 1e-3, "weight_decay": 0.01}
    small = {**MIXED, "dataset.max_rows": 4, "tokenizer.max_seq_len": 32, "max_steps_per_epoch": 2,
             "save_every_n_steps": 2, "kd_loss": FUSED, "optimizer": optimizer}
    cfg = tiny_config(tmp_path, *tiny_dirs, **small)
    cache_dir = tmp_path / "cache"
    tune_run(cfg, f"teacher_cache={cache_dir}", "cache.rows=run", "cache.k=8", recipe=CACHE)
    proc = tune_run(cfg, f"teacher_cache={cache_dir}")
    assert "Teacher model is initialized" not in proc.stderr + proc.stdout
    _finite_steps(tmp_path / "out", 2)
    assert any("q_proj" in k for k in _moved(tmp_path / "out", tiny_dirs[1]))
    state = torch.load(tmp_path / "out" / "step_2" / "recipe_state.pt", weights_only=True)[training.OPT_KEY]["state"]
    assert any(type(s["exp_avg"]).__name__ == "OptimState8bit" for s in state.values())
