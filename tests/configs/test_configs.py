import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import DOLLY, REPO, TINY
from tests.conftest import tune_run

CONFIGS = sorted((REPO / "configs" / "smollm2").glob("*.yaml")) + sorted((REPO / "configs" / "llama3_2").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_tune_validate_passes(path):
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "validate", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "Config is well-formed!" in proc.stdout, proc.stderr[-2000:]


def test_jsd_and_kl_configs_differ_only_in_the_kd_loss():
    for suffix in ("single_device", "quick"):
        jsd = OmegaConf.to_container(OmegaConf.load(REPO / f"configs/smollm2/135M_to_90M_jsd_{suffix}.yaml"))
        kl = OmegaConf.to_container(OmegaConf.load(REPO / f"configs/smollm2/135M_to_90M_kl_{suffix}.yaml"))
        assert {k for k in jsd if jsd[k] != kl.get(k)} == {"kd_loss", "output_dir"}
        assert jsd["kd_loss"]["_component_"] == "jsd_loss.JSDistillWithChunkedOutputLoss"
        assert kl["kd_loss"] == {**{k: v for k, v in jsd["kd_loss"].items() if k != "beta"},
                                 "_component_": "jsd_loss.KLDistillWithChunkedOutputLoss", "direction": "forward"}


def test_llama3_jsd_configs_use_torchtunes_llama3_builders_and_differ_only_in_the_student():
    full = OmegaConf.to_container(OmegaConf.load(REPO / "configs/llama3_2/8B_to_1B_jsd_single_device.yaml"))
    lora = OmegaConf.to_container(OmegaConf.load(REPO / "configs/llama3_2/8B_to_1B_jsd_lora_single_device.yaml"))
    assert {k for k in {**full, **lora} if full.get(k) != lora.get(k)} == {"model", "optimizer", "output_dir"}
    assert {k for k in full["optimizer"] if full["optimizer"][k] != lora["optimizer"][k]} == {"lr"}
    assert full["model"] == {"_component_": "torchtune.models.llama3_2.llama3_2_1b"}
    assert lora["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2_1b"
    assert full["teacher_model"] == {"_component_": "torchtune.models.llama3_1.llama3_1_8b"}
    assert full["tokenizer"]["_component_"] == "torchtune.models.llama3.llama3_tokenizer"
    assert (full["checkpointer"]["model_type"], full["teacher_checkpointer"]["model_type"]) == ("LLAMA3_2", "LLAMA3")
    assert full["kd_loss"]["_component_"] == "jsd_loss.JSDistillWithChunkedOutputLoss"


def test_lora_teacher_config_with_stock_recipe_gives_a_valid_teacher(tmp_path, tiny_dirs):
    from jsd_loss.checkpointing import load_state_dict
    from jsd_loss.models.smollm2 import smollm2_from_hf
    from jsd_loss.prepare import prepare_tuned_teacher

    teacher, _ = tiny_dirs
    cfg = OmegaConf.load(REPO / "configs/smollm2/135M_lora_single_device.yaml")
    cfg.output_dir = str(tmp_path / "out")
    cfg.teacher_dir = str(teacher)
    cfg.model = {**cfg.model, "_component_": "jsd_loss.models.smollm2.lora_smollm2", **TINY}
    cfg.dataset.source = str(DOLLY)
    cfg.dataset.max_rows = 8
    cfg.batch_size, cfg.max_steps_per_epoch, cfg.gradient_accumulation_steps = 2, 2, 1
    cfg.tokenizer.max_seq_len = 64
    path = tmp_path / "lora.yaml"
    OmegaConf.save(cfg, path)
    tune_run(path, recipe="lora_finetune_single_device")
    merged = tmp_path / "out" / "epoch_0"
    assert (merged / "tokenizer.json").is_file()
    model = smollm2_from_hf(str(merged))  # dims and weights check out as a SmolLM2 HF directory
    assert len(model.layers) == TINY["num_layers"]
    # the stock output as the plain HF teacher dir the distill configs take: the LoRA targets
    # (q, v, output and MLP projections) changed, k and the embeddings are the base's
    tuned = load_state_dict(prepare_tuned_teacher(merged, teacher, tmp_path / "tuned"))
    base = load_state_dict(teacher)
    for name in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"):
        assert not torch.equal(tuned[f"model.layers.0.{name}.weight"], base[f"model.layers.0.{name}.weight"])
    assert torch.equal(tuned["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(tuned["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_features_quick_config_is_the_quick_config_plus_its_feature_block():
    quick = OmegaConf.to_container(OmegaConf.load(REPO / "configs/smollm2/135M_to_90M_jsd_quick.yaml"))
    feats = OmegaConf.to_container(OmegaConf.load(REPO / "configs/smollm2/135M_to_90M_jsd_features_quick.yaml"))
    assert {k for k in {**quick, **feats} if feats.get(k) != quick.get(k)} == {"feature_distillation", "output_dir"}
    assert feats["feature_distillation"] == {"weight": 1.0, "loss": "normalized_mse", "layer_map": "auto",
                                             "targets": ["residual"], "projection": "none"}


def test_gkd_configs_are_the_jsd_configs_plus_an_on_policy_block():
    from jsd_loss.training import OnPolicyConfig, on_policy_config

    for suffix in ("single_device", "quick"):
        jsd = OmegaConf.load(REPO / f"configs/smollm2/135M_to_90M_jsd_{suffix}.yaml")
        gkd = OmegaConf.load(REPO / f"configs/smollm2/135M_to_90M_gkd_{suffix}.yaml")
        a, b = OmegaConf.to_container(jsd), OmegaConf.to_container(gkd)
        assert {k for k in {**a, **b} if a.get(k) != b.get(k)} == {"on_policy", "output_dir"}
        c = on_policy_config(gkd)  # passes the recipe's checks
        assert c.active and c.lmbda == 0.5 and c.long_prompts == "skip"
        assert c.max_new_tokens < gkd.tokenizer.max_seq_len and isinstance(c, OnPolicyConfig)
