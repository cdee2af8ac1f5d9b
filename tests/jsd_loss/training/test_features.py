"""Feature distillation's layer map, hooks and step bookkeeping on tiny models, against
manual layer-by-layer forwards and float64 references."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import training

from jsd_loss.models.smollm2 import lora_smollm2, smollm2
from jsd_loss.pruning import keep_hidden_channels, keep_layers, pruned_config
from jsd_loss.training import (
    FEATURE_STATE,
    TARGETS,
    FeatureConfig,
    FeatureDistiller,
    FeatureMap,
    feature_config,
    feature_map,
    setup_feature_distillation,
)
from tests.conftest import TINY
from tests.jsd_loss.pruning._tiny import tiny_teacher, tokens, tune_model

CPU = torch.device("cpu")


def manual_features(model, x):
    """{(target, layer): features} from a forward written out layer by layer."""
    h = model.tok_embeddings(x)
    out = {}
    for i, layer in enumerate(model.layers):
        normed = layer.sa_norm(h)
        attn = layer.attn(normed, normed)
        h = h + attn
        mlp = layer.mlp(layer.mlp_norm(h))
        h = h + mlp
        out["attention", i], out["mlp", i], out["residual", i] = attn, mlp, h
    return out


def per_token64(s, t, kind):
    s, t = s.double(), t.double()
    if kind == "cosine":
        return 1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    mse = ((s - t) ** 2).mean(-1)
    return mse / ((t**2).mean(-1) + 1e-6) if kind == "normalized_mse" else mse


def run_captured(distiller, student, teacher, x, row_ids):
    with distiller.capture(student, teacher):
        student(x)
        with torch.no_grad():
            teacher(x)
        return distiller.loss_sum(row_ids)


@pytest.mark.parametrize("kind", ["mse", "cosine", "normalized_mse"])
def test_loss_equals_the_reference_from_a_manual_forward(kind):
    torch.manual_seed(0)
    student, teacher = smollm2(**TINY), smollm2(**TINY)
    x = torch.randint(0, TINY["vocab_size"], (2, 9))
    row_ids = torch.tensor([[0] * 9, [1] * 6 + [-1] * 3])  # the second row's last 3 are padding
    pairs = ((0, 1), (1, 0), (1, 1))
    config, fmap = FeatureConfig(1.0, kind, pairs, TARGETS), FeatureMap(pairs, 32, 32)
    distiller = FeatureDistiller(config, fmap, seed=0, device=CPU)
    got = run_captured(distiller, student, teacher, x, row_ids)
    ref_s, ref_t = manual_features(student, x), manual_features(teacher, x)
    real = row_ids >= 0
    terms = [per_token64(ref_s[target, s], ref_t[target, t], kind)[real].sum() for target in TARGETS for s, t in pairs]
    assert got.item() == pytest.approx((sum(terms) / len(terms)).item(), rel=1e-5)
    assert not distiller._captured  # nothing kept after the block


def _pruned_student_dir(tmp_path, layers=None, channels=None):
    """A tiny teacher and a student cut from it whose removed layers add nothing and whose
    removed channels are zero everywhere: its features equal the teacher's at the kept
    layers and channels, so the right map scores 0 and any other more."""
    # a negligible RMSNorm eps: with it, a norm over the kept channels times sqrt(d / k) is exact
    config, state, _ = tiny_teacher(num_layers=4, norm_eps=1e-12)
    state = dict(state)
    if layers is not None:  # a dropped layer writes nothing into the residual stream
        for i in set(range(4)) - set(layers):
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                key = f"model.layers.{i}.{name}.weight"
                state[key] = torch.zeros_like(state[key])
    student_config, student_state, manifest = dict(config), dict(state), {"teacher_layers": list(range(4))}
    if channels is not None:
        dropped = sorted(set(range(32)) - set(channels))
        state["model.embed_tokens.weight"][:, dropped] = 0
        for key in state:
            if key.endswith(("o_proj.weight", "down_proj.weight")):
                state[key][dropped] = 0
        student_state = keep_hidden_channels(state, torch.tensor(channels))
        student_config = pruned_config(student_config, hidden_size=len(channels))
        manifest["hidden_channels"] = channels
    if layers is not None:
        student_state = keep_layers(student_state, layers)
        student_config = {**student_config, "num_hidden_layers": len(layers)}
        manifest["teacher_layers"] = layers
    (tmp_path / "pruning.json").write_text(json.dumps(manifest))
    return config, tune_model(config, state), student_config, tune_model(student_config, student_state)


@pytest.mark.parametrize("pruned", ["depth", "width", "both"])
def test_auto_maps_a_pruned_student_to_its_kept_layers_and_channels(tmp_path, pruned):
    layers = [0, 2, 3] if pruned in ("depth", "both") else None
    channels = [1, 2, 5, 8, 9, 13, 17, 20, 21, 22, 26, 27, 28, 29, 30, 31] if pruned in ("width", "both") else None
    teacher_config, teacher, student_config, student = _pruned_student_dir(tmp_path, layers, channels)
    config = FeatureConfig(1.0, "normalized_mse", "auto", TARGETS)
    fmap = feature_map(config, student_config, teacher_config, tmp_path)
    assert fmap.pairs == tuple(enumerate(layers or range(4)))
    assert fmap.teacher_channels == (tuple(channels) if channels else None)
    x = tokens(seq=10)
    real = torch.ones(2, 10, dtype=torch.long)
    exact = run_captured(FeatureDistiller(config, fmap, seed=0, device=CPU), student, teacher, x, real)
    assert exact.item() < 1e-9
    # the test can fail: the student against the next teacher layer, or the first channels
    shifted = FeatureMap(tuple((s, min(t + 1, 3)) for s, t in fmap.pairs), fmap.student_width, 32,
                         tuple(range(len(channels))) if channels else None)
    wrong = run_captured(FeatureDistiller(config, shifted, seed=0, device=CPU), student, teacher, x, real)
    assert wrong.item() > 1.0


def test_a_linear_projection_starts_at_the_kept_channels_and_low_rank_has_rank_r(tmp_path):
    channels = list(range(0, 32, 2))
    teacher_config, teacher, student_config, student = _pruned_student_dir(tmp_path, channels=channels)
    x, real = tokens(seq=7), torch.ones(2, 7, dtype=torch.long)
    linear = FeatureConfig(1.0, "mse", "auto", ("residual", "mlp"), "linear")
    distiller = setup_feature_distillation(linear, student_config, teacher_config, tmp_path, seed=0, device=CPU)
    assert sorted(distiller.projections) == [f"{t}_{i}_{i}" for t in ("mlp", "residual") for i in range(4)]
    w = distiller.projections["residual_0_0"].weight
    assert w.shape == (32, 16) and w.dtype == torch.float32
    assert torch.equal(w[channels], torch.eye(16)) and w.sum() == 16
    assert run_captured(distiller, student.float(), teacher.float(), x, real).item() < 1e-8
    low = setup_feature_distillation(FeatureConfig(1.0, "mse", ((0, 1),), ("attention",), "low_rank", 3),
                                     student_config, teacher_config, tmp_path, seed=0, device=CPU)
    down, up = low.projections["attention_0_1"]
    assert down.weight.shape == (3, 16) and up.weight.shape == (32, 3)
    again = setup_feature_distillation(FeatureConfig(1.0, "mse", ((0, 1),), ("attention",), "low_rank", 3),
                                       student_config, teacher_config, tmp_path, seed=0, device=CPU)
    assert torch.equal(again.projections["attention_0_1"][0].weight, down.weight)  # drawn from the seed alone


def test_bad_maps_are_refused_with_clear_errors(tmp_path):
    teacher = {"num_hidden_layers": 4, "hidden_size": 32}
    student = {"num_hidden_layers": 2, "hidden_size": 32}
    narrow = {"num_hidden_layers": 2, "hidden_size": 24}
    cfg = lambda layer_map="auto", projection="none": FeatureConfig(1.0, "mse", layer_map, ("residual",), projection)
    with pytest.raises(ValueError, match=r"layer_map: auto reads the student's pruning manifest, but "
                                         r".*pruning.json does not exist"):
        feature_map(cfg(), student, teacher, tmp_path)
    with pytest.raises(ValueError, match=r"pair \[2, 0\] is out of range: the student has layers 0..1, "
                                         r"the teacher 0..3"):
        feature_map(cfg(((0, 0), (2, 0))), student, teacher, tmp_path)
    with pytest.raises(ValueError, match=r"pair \[1, 4\] is out of range"):
        feature_map(cfg(((1, 4),)), student, teacher, tmp_path)
    with pytest.raises(ValueError, match="the student's hidden width is 24 and the teacher's 32, and "
                                         "projection: none needs"):
        feature_map(cfg(((0, 0),)), narrow, teacher, tmp_path)
    assert feature_map(cfg(((0, 0),), "linear"), narrow, teacher, tmp_path).teacher_channels is None
    (tmp_path / "pruning.json").write_text(json.dumps({"teacher_layers": [0, 1, 2]}))
    with pytest.raises(ValueError, match="lists 3 teacher_layers but the student has 2 layers"):
        feature_map(cfg(), student, teacher, tmp_path)
    (tmp_path / "pruning.json").write_text(json.dumps({"teacher_layers": [0, 9]}))
    with pytest.raises(ValueError, match=r"pair \[1, 9\] is out of range"):
        feature_map(cfg(), student, teacher, tmp_path)


def _cfg(**block):
    return OmegaConf.create({"feature_distillation": block})


def test_config_block_defaults_off_switch_and_errors():
    assert feature_config(OmegaConf.create({})) is None
    assert feature_config(_cfg(weight=0.0, loss="cosine", layer_map=[[0, 1]])) is None
    assert feature_config(_cfg(weight=0.5)) == FeatureConfig(0.5, "mse", "auto", ("residual",), "none")
    full = feature_config(_cfg(weight=2, loss="normalized_mse", layer_map=[[0, 1], [1, 3]],
                               targets=["mlp", "attention"], projection={"low_rank": 8}))
    assert full == FeatureConfig(2.0, "normalized_mse", ((0, 1), (1, 3)), ("mlp", "attention"), "low_rank", 8)
    bad = [
        (dict(weight=-1), "feature_distillation.weight must be a finite number >= 0"),
        (dict(weight=1, loss="l1"), "feature_distillation.loss must be one of mse, cosine, normalized_mse, got 'l1'"),
        (dict(weight=1, targets=["residual", "logits"]), "feature_distillation.targets must be a non-empty list"),
        (dict(weight=1, projection="mlp"), "feature_distillation.projection must be none, linear or {low_rank: r}"),
        (dict(weight=1, projection={"low_rank": 0}), "feature_distillation.projection must be"),
        (dict(weight=1, layer_map=[[0, 1, 2]]), "feature_distillation.layer_map must be auto or a non-empty list"),
        (dict(weight=1, layer_map=[[0, 1], [0, 1]]), "feature_distillation.layer_map lists a pair twice"),
        (dict(weight=0, wieght=1), r"feature_distillation has unknown keys \['wieght'\]"),
    ]
    for block, message in bad:
        with pytest.raises(ValueError, match=message):
            feature_config(_cfg(**block))
    cached = OmegaConf.create({"feature_distillation": {"weight": 1.0}, "teacher_cache": "/tmp/cache"})
    with pytest.raises(ValueError, match="feature_distillation.weight=1.0 needs the teacher's hidden states, but "
                                         "teacher_cache=/tmp/cache holds only its top-k output distributions"):
        feature_config(cached)


def test_lora_student_with_activation_checkpointing_gives_the_same_loss_and_gradients():
    lora = dict(lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8)
    torch.manual_seed(0)
    teacher = smollm2(**TINY)
    plain = lora_smollm2(**TINY, **lora)
    checkpointed = lora_smollm2(**TINY, **lora)
    for m in plain.modules():  # adapters away from zero, so their gradients are all non-zero
        if hasattr(m, "lora_b"):
            torch.nn.init.normal_(m.lora_b.weight)
    checkpointed.load_state_dict(plain.state_dict())
    training.set_activation_checkpointing(checkpointed, auto_wrap_policy={type(plain.layers[0])})
    x, row_ids = torch.randint(0, TINY["vocab_size"], (2, 8)), torch.zeros(2, 8, dtype=torch.long)
    pairs = ((0, 0), (1, 1))
    config = FeatureConfig(1.0, "normalized_mse", pairs, TARGETS)
    grads = []
    for student in (plain, checkpointed):
        distiller = FeatureDistiller(config, FeatureMap(pairs, 32, 32), seed=0, device=CPU)
        loss = run_captured(distiller, student, teacher, x, row_ids)
        loss.backward()
        grads.append((loss.item(), {k.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
                                    for k, p in student.named_parameters() if p.grad is not None}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and loss_a > 0
    assert sorted(grad_a) == sorted(grad_b) and any("lora_a" in k for k in grad_a)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-8)


def _batch(labels, row_ids):
    return {"labels": torch.tensor(labels), "row_ids": torch.tensor(row_ids)}


def test_a_step_is_the_mean_over_its_real_tokens_whatever_the_accumulation():
    """Two accumulated batches: the feature term each adds to ``loss * label tokens`` makes the
    step's gradient, once divided by the step's label tokens, weight x (sum / real tokens)."""
    pairs = ((0, 0),)
    distiller = FeatureDistiller(FeatureConfig(3.0, "mse", pairs), FeatureMap(pairs, 4, 4), seed=0, device=CPU)
    window = [_batch([[-100, 5, 6, -100]], [[0, 0, 0, -1]]),  # 2 label tokens, 3 real
              _batch([[-100, 5, -100, -100]], [[1, 1, 1, 1]])]  # 1 label token, 4 real
    seen = []
    for idx, batch in distiller.batches(enumerate(window), 2, ignore_index=-100):
        seen.append(idx)
        term = distiller.objective(torch.tensor(float(idx + 1)))  # feature sums 1 and 2
        assert term.item() == pytest.approx(3.0 * 3 / 7 * (idx + 1))
    assert seen == [0, 1]
    assert distiller.step(3, max_norm=None) == pytest.approx((1 + 2) / 7)
    assert distiller.step(3, max_norm=None) == 0.0  # the sums restart with each step


def test_projection_state_round_trips_and_a_changed_layout_is_refused():
    pairs = ((0, 1),)
    config = FeatureConfig(1.0, "mse", pairs, ("residual",), "low_rank", 2)
    opt = OmegaConf.create({"_component_": "torch.optim.AdamW", "lr": 1e-2})
    sched = OmegaConf.create({"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                              "num_warmup_steps": 0})
    a = FeatureDistiller(config, FeatureMap(pairs, 4, 6), seed=0, device=CPU)
    a.setup_optimizer(opt, sched, num_training_steps=10, last_epoch=-1)
    for p in a.projections.parameters():
        p.grad = torch.ones_like(p)
    a.step(1, max_norm=1.0)
    saved = {FEATURE_STATE: a.recipe_state()}
    b = FeatureDistiller(config, FeatureMap(pairs, 4, 6), seed=1, device=CPU)
    b.setup_optimizer(opt, sched, num_training_steps=10, last_epoch=0, state=saved)
    for (name, pa), pb in zip(a.projections.named_parameters(), b.projections.parameters()):
        assert torch.equal(pa, pb), name
    assert b._optimizer.state_dict()["state"][0]["exp_avg"].equal(a._optimizer.state_dict()["state"][0]["exp_avg"])
    other = FeatureDistiller(FeatureConfig(1.0, "mse", pairs, ("mlp",), "low_rank", 2), FeatureMap(pairs, 4, 6),
                             seed=0, device=CPU)
    with pytest.raises(ValueError, match="the checkpoint's feature_distillation .* differs from this config's"):
        other.setup_optimizer(opt, sched, num_training_steps=10, last_epoch=0, state=saved)
    with pytest.raises(ValueError, match="has no feature_distillation state"):
        b.setup_optimizer(opt, sched, num_training_steps=10, last_epoch=0, state={"global_step": 1})
