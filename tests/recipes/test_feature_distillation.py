"""``feature_distillation`` in the distillation recipes, end to end on tiny models: most runs
in process (the recipe class, as ``tune run`` drives it), the distributed one with 2 gloo ranks."""

import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import config as tt_config

from jsd_loss.checkpointing import load_state_dict, read_config, write_model_dir
from jsd_loss.models.smollm2 import smollm2_from_hf
from jsd_loss.pruning import keep_hidden_channels, keep_layers, pruned_config
from jsd_loss.recipes.jsd_distill_distributed import KDRecipeDistributed
from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice
from jsd_loss.training import FEATURE_STATE, TARGETS, build_dataloader
from tests.conftest import DOLLY, TINY, TINY_MODEL, metrics, tiny_config, write_tiny_hf_dir
from tests.conftest import train_in_process as train
from tests.jsd_loss.training.test_features import manual_features
from tests.recipes.test_jsd_distill_distributed import tune_run_distributed

SHORT = {"max_steps_per_epoch": 3, "save_every_n_steps": None, "keep_freed_cpu_memory": False}
STEP_KEYS = ("loss", "class_loss", "kd_loss", "grad_norm", "lr")


def features(weight=1.0, **block):
    return {"feature_distillation": {"weight": weight, **block}}


def _dir(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_weight_zero_is_the_logit_only_run_exactly(tmp_path, tiny_dirs):
    plain, zero = _dir(tmp_path, "plain"), _dir(tmp_path, "zero")
    train(tiny_config(plain, *tiny_dirs, **SHORT))
    off = features(0.0, loss="cosine", layer_map=[[0, 1]], targets=list(TARGETS), projection="linear")
    recipe = train(tiny_config(zero, *tiny_dirs, **SHORT, **off))
    assert recipe._features is None
    ref, got = metrics(plain / "out"), metrics(zero / "out")
    assert len(got) == 3 and all("feature_loss" not in r for r in got)
    for a, b in zip(ref, got):
        assert {k: b[k] for k in STEP_KEYS} == {k: a[k] for k in STEP_KEYS}
    ref_w, got_w = load_state_dict(plain / "out" / "final"), load_state_dict(zero / "out" / "final")
    assert sorted(got_w) == sorted(ref_w) and all(torch.equal(got_w[k], ref_w[k]) for k in ref_w)


def _pruned_student(tmp_path, teacher_dir, layers, channels):
    """A student cut from the tiny teacher (kept layers and residual channels), with its manifest."""
    teacher_cfg = read_config(teacher_dir)
    state = keep_layers(keep_hidden_channels(load_state_dict(teacher_dir), torch.tensor(channels)), layers)
    cfg = pruned_config(teacher_cfg, num_hidden_layers=len(layers), hidden_size=len(channels))
    out = tmp_path / "pruned"
    out.mkdir()
    write_model_dir(out, state, cfg, copy_from=teacher_dir,
                    extra_json={"pruning.json": {"teacher_layers": layers, "hidden_channels": channels}})
    return out


def test_auto_feature_loss_of_a_pruned_student_equals_the_reference(tmp_path, tiny_dirs):
    """Step 1's logged feature loss (before any update) equals the MSE of the kept teacher
    layer's features at the kept channels, from manual float64 forwards, over the real tokens."""
    teacher_dir = tiny_dirs[0]
    layers, channels = [1], [c for c in range(32) if c % 4 != 1]
    student_dir = _pruned_student(tmp_path, teacher_dir, layers, channels)
    path = tiny_config(tmp_path, teacher_dir, student_dir, **{
        **SHORT, "model": {**TINY_MODEL, "num_layers": 1, "embed_dim": 24, "head_dim": 8},
        "dataset.max_rows": 2, "tokenizer.max_seq_len": 256, "max_steps_per_epoch": 1, "kd_ratio": 0.3,
        **features(0.7, loss="mse", layer_map="auto", targets=list(TARGETS), projection="none"),
    })
    train(path)
    step1 = metrics(tmp_path / "out")[0]

    cfg = OmegaConf.load(path)
    batch = next(iter(build_dataloader(cfg.dataset, tt_config.instantiate(cfg.tokenizer), batch_size=2,
                                       shuffle=False, seed=0, ignore_index=-100)))
    real = batch["row_ids"] >= 0
    assert not real.all()  # some padding, which must not count
    with torch.no_grad():
        s = manual_features(smollm2_from_hf(str(student_dir), dtype=torch.float64), batch["tokens"])
        t = manual_features(smollm2_from_hf(str(teacher_dir), dtype=torch.float64), batch["tokens"])
    terms = [((s[target, 0] - t[target, 1][..., channels]) ** 2).mean(-1)[real].mean() for target in TARGETS]
    assert step1["feature_loss"] == pytest.approx(float(sum(terms) / 3), rel=1e-5)
    mix = 0.7 * step1["class_loss"] + 0.3 * step1["kd_loss"]
    assert step1["loss"] == pytest.approx(mix + 0.7 * step1["feature_loss"], rel=1e-6)


LEARNED = features(0.5, loss="cosine", layer_map=[[0, 1], [1, 0]], targets=["residual", "mlp"],
                   projection={"low_rank": 4})


def _projections(step_dir):
    return torch.load(step_dir / "recipe_state.pt", weights_only=True)[FEATURE_STATE]["projections"]


def test_learned_projections_train_resume_exactly_and_stay_out_of_the_hf_output(tmp_path, tiny_dirs):
    common = {**SHORT, **LEARNED, "max_steps_per_epoch": 4, "save_every_n_steps": 2, "dataset.max_rows": 8}
    full = _dir(tmp_path, "full")
    train(tiny_config(full, *tiny_dirs, **common))
    ref = metrics(full / "out")
    assert [r["step"] for r in ref] == [1, 2, 3, 4] and all(math.isfinite(r["feature_loss"]) for r in ref)
    step2, step4 = _projections(full / "out" / "step_2"), _projections(full / "out" / "step_4")
    assert sorted(step2) == sorted(f"{t}_{s}_{u}.{i}.weight" for t in ("mlp", "residual")
                                   for s, u in ((0, 1), (1, 0)) for i in (0, 1))
    assert not any(torch.equal(step2[k], step4[k]) for k in step2)  # trained
    start = load_state_dict(tiny_dirs[1])
    for name in ("step_2", "step_4", "final"):
        assert sorted(load_state_dict(full / "out" / name)) == sorted(start)  # the student's weights only

    # the state a run killed right after its step-2 checkpoint leaves on disk
    resumed = _dir(tmp_path, "resumed")
    (resumed / "out" / "logs").mkdir(parents=True)
    shutil.copytree(full / "out" / "step_2", resumed / "out" / "step_2")
    lines = (full / "out" / "logs" / "metrics.jsonl").read_text().splitlines()[:2]
    (resumed / "out" / "logs" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    train(tiny_config(resumed, *tiny_dirs, **common, resume_from_checkpoint=True))
    got = metrics(resumed / "out")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref[2:], got[2:]):
        for key in ("loss", "feature_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
    again = _projections(resumed / "out" / "step_4")
    for k in step4:
        torch.testing.assert_close(again[k], step4[k], rtol=1e-6, atol=1e-9)
    for k, w in load_state_dict(full / "out" / "final").items():
        torch.testing.assert_close(load_state_dict(resumed / "out" / "final")[k], w, rtol=1e-6, atol=1e-9)


def test_lora_student_fused_kd_and_bf16_mixed_precision_with_every_target(tmp_path, tiny_dirs):
    lora = {"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, **TINY}
    fused = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "chunk_size": 16, "return_ce": True}
    recipe = train(tiny_config(tmp_path, *tiny_dirs, **SHORT, model=lora, kd_loss=fused, mixed_precision="bf16",
                               **features(1.0, loss="normalized_mse", layer_map=[[0, 0], [1, 1]],
                                          targets=list(TARGETS), projection="linear")))
    m = metrics(tmp_path / "out")
    assert len(m) == 3 and all(math.isfinite(r[k]) for r in m for k in ("loss", "feature_loss", "grad_norm"))
    assert all(0 < r["feature_loss"] for r in m)
    identity = torch.eye(TINY["embed_dim"])
    assert all(not torch.equal(p.detach(), identity) for p in recipe._features.projections.parameters())
    final = load_state_dict(tmp_path / "out" / "final")
    assert sorted(final) == sorted(load_state_dict(tiny_dirs[1]))  # no adapters, no projections


def test_packed_rows_give_the_steps_of_the_rows_unpacked_with_unchunked_losses(tmp_path, tiny_dirs):
    """A block-causal pack gives every real token the features it has unpacked, and the
    padding of either is left out: one step over all 8 rows, packed or padded, is the same."""
    from jsd_loss.datasets import dolly_dataset

    tokenizer = tt_config.instantiate(OmegaConf.load(tiny_config(tmp_path, *tiny_dirs)).tokenizer, max_seq_len=256)
    packs = len(dolly_dataset(tokenizer, source=str(DOLLY), max_rows=8, packed=True))
    assert packs < 8
    common = {**SHORT, "tokenizer.max_seq_len": 256, "dataset.max_rows": 8, "max_steps_per_epoch": None,
              "loss": {"_component_": "torch.nn.CrossEntropyLoss", "ignore_index": -100},
              "kd_loss": {"_component_": "jsd_loss.JSDistillLoss", "beta": 0.5},
              **features(1.0, loss="mse", layer_map=[[0, 0], [1, 1]], targets=list(TARGETS))}
    rows, packed = _dir(tmp_path, "rows"), _dir(tmp_path, "packed")
    train(tiny_config(rows, *tiny_dirs, **common, batch_size=8))
    train(tiny_config(packed, *tiny_dirs, **common, batch_size=packs, **{"dataset.packed": True}))
    (a,), (b,) = metrics(rows / "out"), metrics(packed / "out")
    for key in ("loss", "class_loss", "kd_loss", "feature_loss", "grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.parametrize("recipe", [KDRecipeSingleDevice, KDRecipeDistributed], ids=["single", "distributed"])
def test_features_from_a_teacher_cache_are_refused_when_the_recipe_is_constructed(tmp_path, tiny_dirs, recipe):
    cfg = OmegaConf.load(tiny_config(tmp_path, *tiny_dirs, teacher_cache=str(tmp_path / "cache"), **features(1.0)))
    with pytest.raises(ValueError, match=r"feature_distillation.weight=1.0 needs the teacher's hidden states, but "
                                         r"teacher_cache=\S+cache holds only its top-k output distributions"):
        recipe(cfg)
    cfg.feature_distillation.weight = 0.0  # off: the cache is fine
    recipe(cfg)


def test_bad_maps_fail_at_setup_before_anything_loads_or_is_written(tmp_path, tiny_dirs):
    narrow = write_tiny_hf_dir(tmp_path / "narrow", tokenizer_from=tiny_dirs[0], embed_dim=24)
    cases = [
        ({**features(layer_map=[[0, 0], [1, 2]])}, r"pair \[1, 2\] is out of range: the student has layers 0..1"),
        ({**features(layer_map="auto")}, "layer_map: auto reads the student's pruning manifest, but"),
        ({"student_dir": str(narrow), "model": {**TINY_MODEL, "embed_dim": 24}, **features(layer_map=[[0, 0]])},
         "the student's hidden width is 24 and the teacher's 32, and projection: none needs"),
    ]
    for i, (overrides, message) in enumerate(cases):
        d = _dir(tmp_path, f"case{i}")
        cfg = OmegaConf.load(tiny_config(d, *tiny_dirs, **overrides))
        recipe = KDRecipeSingleDevice(cfg)
        with pytest.raises(ValueError, match=message):
            recipe.setup(cfg)
        assert not (d / "out").exists()


def test_two_ranks_and_accumulation_match_one_big_batch(tmp_path, tiny_dirs):
    """The feature term is the mean over the step's real tokens: a batch of 4, two accumulated
    batches of 2, and 2 gloo ranks of 2 give the same steps; the learned projections'
    gradients are summed over the ranks, so their saved states agree too."""
    common = {**SHORT, "save_every_n_steps": 3, **features(0.8, loss="normalized_mse", layer_map=[[0, 1], [1, 1]],
                                                           targets=["residual", "attention"], projection="linear")}
    big, accum, dist = _dir(tmp_path, "big"), _dir(tmp_path, "accum"), _dir(tmp_path, "dist")
    train(tiny_config(big, *tiny_dirs, **common, batch_size=4))
    train(tiny_config(accum, *tiny_dirs, **common, batch_size=2, gradient_accumulation_steps=2))
    tune_run_distributed(tiny_config(dist, *tiny_dirs, **common, batch_size=2))
    ref = metrics(big / "out")
    assert len(ref) == 3 and ref[0]["feature_loss"] > 0
    for run in (accum, dist):
        got = metrics(run / "out")
        for a, b in zip(ref, got):
            for key in ("loss", "class_loss", "kd_loss", "feature_loss", "grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=1e-4), (run.name, a["step"], key)
        ref_p, got_p = _projections(big / "out" / "step_3"), _projections(run / "out" / "step_3")
        for k in ref_p:
            torch.testing.assert_close(got_p[k], ref_p[k], rtol=1e-4, atol=1e-6)
