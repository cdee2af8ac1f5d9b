import os

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import training

from jsd_loss.checkpointing import load_state_dict, read_config
from jsd_loss.models.smollm2 import smollm2_from_hf, smollm2_tune_to_hf
from jsd_loss.training import (
    RECIPE_STATE,
    checked_keep_last_n,
    latest_checkpoint,
    merged_hf_state_dict,
    prune_checkpoints,
    read_recipe_state,
    refuse_earlier_run,
    setup_student,
    write_checkpoint,
)
from tests.conftest import TINY, write_tiny_hf_dir


def test_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    assert refuse_earlier_run(tmp_path / "none", resume=False, overwrite=False) == []
    (tmp_path / "step_2").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / "logs").mkdir()
    with pytest.raises(FileExistsError, match=r"already holds a run \(final, step_2\)"):
        refuse_earlier_run(tmp_path, resume=False, overwrite=False)
    assert refuse_earlier_run(tmp_path, resume=True, overwrite=False) == []
    assert refuse_earlier_run(tmp_path, resume=False, overwrite=True) == ["final", "step_2"]


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    for step in (2, 10, 11):
        (tmp_path / f"step_{step}").mkdir()
    for step in (2, 10):  # step_11 was never completed
        torch.save({training.SEED_KEY: 5, "global_step": step, "rng": torch.get_rng_state()},
                   tmp_path / f"step_{step}" / RECIPE_STATE)
    path, state = latest_checkpoint(tmp_path, seed=5)
    assert path.name == "step_10" and state["global_step"] == 10
    with pytest.raises(ValueError, match="trained with seed 5, config has 6"):
        latest_checkpoint(tmp_path, seed=6)
    with pytest.raises(FileNotFoundError, match="no step_N checkpoint"):
        latest_checkpoint(tmp_path / "step_11", seed=5)


def test_pruning_keeps_the_newest_step_checkpoints_and_final(tmp_path):
    names = ["step_1", "step_2", "step_9", "step_10", "final", "logs", "step_x", ".step_11.tmp-abc", ".final.old-q"]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / "step_3").write_text("a file, not a checkpoint")
    removed = prune_checkpoints(tmp_path, keep=2)
    # by step number, not by name (step_10 sorts before step_9 as text)
    assert sorted(removed) == [".step_11.tmp-abc", "step_1", "step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".final.old-q", "final", "logs", "step_10", "step_3",
                                                          "step_9", "step_x"]
    assert prune_checkpoints(tmp_path, keep=None) == [] and prune_checkpoints(tmp_path, keep=1) == ["step_9"]
    assert checked_keep_last_n(None) is None and checked_keep_last_n(3) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep_last_n_checkpoints must be a positive integer or null"):
            checked_keep_last_n(bad)


class Payload:
    """Unpickling it runs ``os.system``: here, creating a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_payload(step_dir, marker):
    step_dir.mkdir(parents=True, exist_ok=True)
    torch.save({training.SEED_KEY: 0, "global_step": 1, "x": Payload(marker)}, step_dir / RECIPE_STATE)


def test_a_planted_pickle_is_refused_without_running(tmp_path):
    plant_payload(tmp_path / "out" / "step_1", tmp_path / "marker")
    # the payload is live: a plain unpickle would run it
    live = tmp_path / "live"
    torch.save(Payload(live), tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.exists()

    state = tmp_path / "out" / "step_1" / RECIPE_STATE
    with pytest.raises(ValueError, match=rf"refusing to resume from {state}: it holds the global .*system"):
        latest_checkpoint(tmp_path / "out", seed=0)
    assert not (tmp_path / "marker").exists()


def test_a_truncated_recipe_state_is_refused_naming_the_file(tmp_path):
    (tmp_path / "step_1").mkdir()
    torch.save({training.SEED_KEY: 0, "global_step": 1, "w": torch.ones(100)}, tmp_path / "step_1" / RECIPE_STATE)
    assert read_recipe_state(tmp_path / "step_1" / RECIPE_STATE)["global_step"] == 1
    data = (tmp_path / "step_1" / RECIPE_STATE).read_bytes()
    (tmp_path / "step_1" / RECIPE_STATE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot resume from {tmp_path / 'step_1' / RECIPE_STATE}: not a readable"):
        latest_checkpoint(tmp_path, seed=0)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_lora_checkpoint_is_the_model_it_was_trained_as(tmp_path, tokenizer_json, use_dora):
    src = write_tiny_hf_dir(tmp_path / "src", seed=3, tokenizer_from=tokenizer_json.parent)
    cfg = read_config(src)
    base = smollm2_from_hf(str(src)).state_dict()
    lora_cfg = OmegaConf.create({"_component_": "jsd_loss.models.smollm2.lora_smollm2", "lora_attn_modules": ["q_proj", "v_proj"],
                                 "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8, "use_dora": use_dora,
                                 **TINY})
    model, lora = setup_student(lora_cfg, base, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                                activation_checkpointing=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)  # a trained adapter (lora_b starts at zero)
            if "magnitude" in name:
                p.mul_(1 + 0.1 * torch.rand_like(p))  # and trained DoRA magnitudes
    tokens = torch.randint(0, TINY["vocab_size"], (1, 9))
    expected = model.eval()(tokens)

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    to_hf = lambda sd: smollm2_tune_to_hf(sd, cfg["num_attention_heads"], cfg["num_key_value_heads"])
    write_checkpoint(tmp_path / "out", merged_hf_state_dict(state, lora, to_hf), cfg, src, {"step": 1})
    out = tmp_path / "out"
    assert not any("lora" in k for k in load_state_dict(out))
    assert (out / "tokenizer.json").is_file() and (out / RECIPE_STATE).is_file()
    merged = smollm2_from_hf(str(out))
    torch.testing.assert_close(merged(tokens), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(smollm2_from_hf(str(src))(tokens), expected, atol=1e-3)


@pytest.mark.parametrize("too_big", ["weights", "recipe_state"])
def test_a_write_the_os_refuses_keeps_the_earlier_checkpoint(tmp_path, too_big):
    """A real failing write (the file-size limit makes write(2) fail with EFBIG part-way, as a
    full disk fails with ENOSPC), in safetensors' Rust writer or in torch.save: a clear error
    naming the checkpoint, the earlier one untouched, nothing half-written left."""
    import resource
    import signal

    small, big = {"w": torch.ones(4)}, {"w": torch.ones(1 << 18)}  # 1 MiB
    weights, state = (big, {"x": torch.ones(4)}) if too_big == "weights" else (small, {"x": torch.ones(1 << 18)})
    write_checkpoint(tmp_path / "step_1", small, {"v": 1}, tmp_path, {"step": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_1").iterdir()}
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, limits[1]))
    try:
        with pytest.raises(OSError, match=rf"^cannot write checkpoint {tmp_path / 'step_1'} \(.*\); nothing of it was "
                                          r"kept, earlier checkpoints are untouched \(is the disk full\? \d+ MiB free there\)"):
            write_checkpoint(tmp_path / "step_1", weights, {"v": 2}, tmp_path, state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_1").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]


def test_resume_refuses_a_corrupted_step_checkpoint_naming_the_file(tmp_path):
    write_checkpoint(tmp_path / "step_1", {"w": torch.ones(4)}, {"v": 1}, tmp_path,
                     {training.SEED_KEY: 0, "global_step": 1, "m": torch.ones(64)})
    assert latest_checkpoint(tmp_path, seed=0)[1]["global_step"] == 1
    state = tmp_path / "step_1" / RECIPE_STATE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit in the middle: torch.load alone may not notice
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"cannot resume from {tmp_path / 'step_1'}: {state} is corrupted: its sha256 "
                                         rf".*; remove {tmp_path / 'step_1'} to resume from the one before it"):
        latest_checkpoint(tmp_path, seed=0)
