from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.training import RNG_KEY, RUN_KEY, check_resume, on_policy_config, rng_state, run_identity, set_rng_state
from tests.conftest import QUICK

SHAPE = {"num_layers": 2, "embed_dim": 32, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "intermediate_dim": 64, "vocab": 49152}


def _identity(world_size=1, shape=SHAPE, **overrides):
    cfg = OmegaConf.load(QUICK)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return run_identity(cfg, world_size, shape, on_policy=on_policy_config(cfg))  # as the recipe passes it


@pytest.mark.parametrize("change, key, was, now", [
    ({"world_size": 2}, "world_size", "1", "2"),
    ({"batch_size": 4}, "batch_size", "2", "4"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps", "1", "2"),
    ({"max_steps_per_epoch": 61}, "max_steps_per_epoch", "60", "61"),
    ({"epochs": 2}, "epochs", "1", "2"),
    ({"shuffle": False}, "shuffle", "True", "False"),
    ({"dataset.max_rows": 100}, "dataset", "'split': 'train'}", "'max_rows': 100}"),
    ({"dataset.packed": True}, "dataset", "'split': 'train'}", "'packed': True}"),
    ({"dataset.split": "eval"}, "dataset", "'split': 'train'}", "'split': 'eval'}"),
    ({"dataset.source": "other.jsonl"}, "dataset", "databricks-dolly-15k.jsonl'", "'other.jsonl'"),
    ({"tokenizer.max_seq_len": 128}, "tokenizer.max_seq_len", "256", "128"),
    ({"shape": {**SHAPE, "num_layers": 3}}, "model_shape", "'num_layers': 2", "'num_layers': 3"),
    ({"on_policy": {"lmbda": 0.5}}, "on_policy", "None", "'lmbda': 0.5"),
])
def test_resume_refuses_a_changed_setting_naming_it(change, key, was, now):
    saved = {RUN_KEY: _identity(), "world_size": 1}
    check_resume(saved, _identity(), Path("out/step_2"))  # unchanged: resumes
    current = _identity(**change)
    with pytest.raises(ValueError, match=r"cannot resume from out/step_2: .*") as e:
        check_resume(saved, current, Path("out/step_2"))
    message = str(e.value)
    assert f"{key} was " in message and was in message.split(f"{key} was ")[1].split(", is ")[0], message
    assert now in message.split(f"{key} was ")[1].split(", is ")[1], message
    assert message.count(", is ") == 1  # only the changed key


def test_resume_refuses_changed_on_policy_sampling_but_not_sample_logging():
    on = {"lmbda": 0.5, "max_new_tokens": 32}
    saved = {RUN_KEY: _identity(on_policy=on), "world_size": 1}
    check_resume(saved, _identity(on_policy={**on, "log_samples": True}), Path("s"))  # logging only
    for change in ({"lmbda": 0.25}, {"max_new_tokens": 64}, {"temperature": 0.5}, {"top_k": 8},
                   {"ce_on_generated": True}, {"long_prompts": "skip"}):
        with pytest.raises(ValueError, match=f"on_policy was .*'{next(iter(change))}'.*generated samples"):
            check_resume(saved, _identity(on_policy={**on, **change}), Path("s"))
    with pytest.raises(ValueError, match="on_policy was .*, is None"):
        check_resume(saved, _identity(), Path("s"))
    # a checkpoint recorded before on_policy was part of the record resumes either way
    older = {k: v for k, v in saved[RUN_KEY].items() if k != "on_policy"}
    check_resume({RUN_KEY: older, "world_size": 1}, _identity(), Path("s"))


def test_a_checkpoint_from_before_the_record_checks_its_world_size():
    check_resume({"world_size": 1}, _identity(batch_size=4), Path("s"))
    with pytest.raises(ValueError, match="world_size was 1, is 2"):
        check_resume({"world_size": 1}, _identity(world_size=2), Path("s"))


def test_each_rank_gets_its_own_generator_back():
    cpu = torch.device("cpu")
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(rng_state(cpu))
    expected = [torch.Generator().manual_seed(100 + rank) for rank in range(2)]
    for rank in (1, 0):
        torch.manual_seed(0)
        set_rng_state({RNG_KEY: states}, rank, cpu)
        assert torch.equal(torch.rand(5), torch.rand(5, generator=expected[rank]))
    # a recipe state with rank 0's CPU generator only (written before per-rank states)
    set_rng_state({"rng_state": states[1]["cpu"]}, 1, cpu)
    assert torch.equal(torch.rand(5), torch.rand(5, generator=torch.Generator().manual_seed(101)))
    assert set(rng_state(cpu)) == {"cpu"}
