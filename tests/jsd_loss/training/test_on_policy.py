"""The on_policy block's checks, prompts and generated batches, the coin and its state."""

import io

import pytest
import torch
from omegaconf import OmegaConf

from jsd_loss.training import (
    OnPolicy, OnPolicyConfig, batch_prompts, check_prompts, generated_batch, on_policy_config, prompt_length,
)

BASE = {"tokenizer": {"max_seq_len": 64}, "dataset": {"_component_": "x"}}


def _cfg(on_policy, **top):
    return OmegaConf.create({**BASE, "on_policy": on_policy, **top})


@pytest.mark.parametrize("on_policy,top,message", [
    ({"lmbda": 1.5}, {}, "on_policy.lmbda must be in [0, 1]"),
    ({"lmbda": -0.1}, {}, "on_policy.lmbda must be in [0, 1]"),
    ({"lmbda": True}, {}, "on_policy.lmbda must be in [0, 1]"),
    ({"max_new_tokens": 0}, {}, "on_policy.max_new_tokens must be an integer >= 1, got 0"),
    ({"max_new_tokens": -4}, {}, "on_policy.max_new_tokens must be an integer >= 1, got -4"),
    ({"lmbda": 0.5, "max_new_tokens": 64}, {}, "on_policy.max_new_tokens=64 leaves no room for a prompt within "
                                               "tokenizer.max_seq_len=64"),
    ({"temperature": -1.0}, {}, "on_policy.temperature must be a number >= 0"),
    ({"top_k": 0}, {}, "on_policy.top_k must be null or an integer >= 1"),
    ({"lmbd": 0.5}, {}, "on_policy has unknown keys ['lmbd']"),
    ({"seq_kd": "yes"}, {}, "on_policy.seq_kd must be True or False"),
    ({"long_prompts": "truncate"}, {}, "on_policy.long_prompts must be 'error' or 'skip'"),
    ({"lmbda": 0.5}, {"teacher_cache": "cache/dir"}, "on_policy.lmbda=0.5 trains on generated tokens, which need "
                                                     "the live teacher's logits, but teacher_cache=cache/dir"),
    ({"seq_kd": True}, {"teacher_cache": "c"}, "on_policy.seq_kd=True trains on generated tokens"),
    ({"lmbda": 0.5}, {"dataset": {"packed": True}}, "on_policy.lmbda=0.5 with dataset.packed=True is not supported"),
    ({"lmbda": 0.5}, {"dataset": {"train_on_input": True}}, "with dataset.train_on_input=True"),
    ({"lmbda": 0.5}, {"feature_distillation": {"weight": 1.0}}, "with feature_distillation is not supported"),
    ({"lmbda": 0.5}, {"tokenizer": {"max_seq_len": None}}, "needs tokenizer.max_seq_len"),
])
def test_bad_on_policy_blocks_are_refused_naming_the_keys(on_policy, top, message):
    with pytest.raises(ValueError) as e:
        on_policy_config(_cfg(on_policy, **top))
    assert message in str(e.value)


def test_a_block_that_never_generates_is_accepted_beside_a_teacher_cache():
    c = on_policy_config(_cfg({"lmbda": 0.0}, teacher_cache="c", dataset={"packed": True}))
    assert c == OnPolicyConfig(lmbda=0.0) and not c.active
    assert on_policy_config(OmegaConf.create(BASE)) is None


def test_prompts_that_leave_no_room_to_generate_are_refused_naming_the_rows():
    ig = -100
    row = lambda p, n: {"tokens": list(range(p + n)), "labels": [ig] * p + list(range(n))}  # noqa: E731
    data = [row(10, 5), row(18, 2), row(19, 1), row(0, 4), {"tokens": [1, 2], "labels": [ig, ig]}]
    check_prompts(data, [0, 1], max_seq_len=20, ignore_index=ig)
    with pytest.raises(ValueError, match=r"2 of the rows this run draws have a prompt longer than "
                                         r"tokenizer.max_seq_len=19 allows .*: row 2 \(19 tokens\), row 1 \(18"):
        check_prompts(data, [0, 2, 1], max_seq_len=19, ignore_index=ig)
    with pytest.raises(ValueError, match=r"1 rows have no prompt .*\[3\]"):
        check_prompts(data, [3], max_seq_len=20, ignore_index=ig)
    with pytest.raises(ValueError, match=r"no labelled position.*\[4\]"):
        check_prompts(data, [4], max_seq_len=20, ignore_index=ig)
    assert prompt_length([ig, ig, 5, ig], ig) == 2 and prompt_length([ig], ig) is None


def test_prompts_and_generated_batches():
    ig, pad = -100, 2
    batch = {"tokens": torch.tensor([[5, 6, 7, 8, 9], [1, 3, 4, pad, pad]]),
             "labels": torch.tensor([[ig, ig, 7, 8, 9], [ig, 3, 4, ig, ig]]),
             "row_ids": torch.tensor([[11, 11, 11, 11, 11], [4, 4, 4, -1, -1]])}
    prompts, rows = batch_prompts(batch, ig)
    assert prompts == [[5, 6], [1]] and rows == [11, 4]
    out = generated_batch(prompts, [[40], [41, 42, 43]], rows, pad_id=pad, ignore_index=ig, device=torch.device("cpu"))
    assert out["tokens"].tolist() == [[5, 6, 40, pad], [1, 41, 42, 43]]
    assert out["labels"].tolist() == [[ig, ig, 40, ig], [ig, 41, 42, 43]]
    assert out["row_ids"].tolist() == [[11, 11, 11, -1], [4, 4, 4, 4]]
    bad = {**batch, "labels": torch.tensor([[ig] * 5, [ig, 3, 4, ig, ig]])}
    with pytest.raises(ValueError, match="batch row 0 has no label"):
        batch_prompts(bad, ig)


def _on_policy(**kw):
    return OnPolicy(OnPolicyConfig(**kw), seed=42, rank=0, stop_tokens=[2], pad_id=2, max_seq_len=64,
                    ignore_index=-100, device=torch.device("cpu"))


def test_the_coin_falls_with_probability_lmbda_and_resumes_from_its_saved_state():
    op = _on_policy(lmbda=0.3, seq_kd=True)
    kinds = [op.begin_step(s) for s in range(1, 4001)]
    assert set(kinds) == {"student", "teacher"}
    assert abs(kinds.count("student") / 4000 - 0.3) < 0.03
    # a state written with torch.save reads back with weights_only=True and continues the draws
    buf = io.BytesIO()
    torch.save({"on_policy_rng": [op.state_dict()]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)["on_policy_rng"]
    ahead = [op.begin_step(s) for s in range(20)]
    other = _on_policy(lmbda=0.3, seq_kd=True)
    assert other.load_state_dict(saved, rank=0)
    assert [other.begin_step(s) for s in range(20)] == ahead
    assert torch.equal(other.sampler.get_state(), op.sampler.get_state())
    assert not other.load_state_dict(None, rank=0)


def test_lmbda_zero_never_draws_and_passes_batches_through():
    op = _on_policy(lmbda=0.0)
    state = op.coin.get_state()
    assert {op.begin_step(s) for s in range(50)} == {"data"} and torch.equal(op.coin.get_state(), state)
    batch = {"tokens": torch.ones(1, 3, dtype=torch.long)}
    assert op.batch(batch, None, None) is batch
    ce = torch.tensor(2.5)
    assert op.class_loss(ce) is ce
    assert op.metrics() == {"on_policy": 0.0, "generated_tokens": 0.0, "generation_seconds": 0.0,
                            "generation_tokens_per_second": 0.0}
    assert _on_policy(lmbda=1.0).begin_step(1) == "student"
    gen = _on_policy(lmbda=1.0)
    gen.begin_step(1)
    assert gen.class_loss(ce).item() == 0.0
    assert _on_policy(lmbda=1.0, ce_on_generated=True).class_loss(ce) is ce


def test_rows_whose_prompts_do_not_fit_are_skipped_on_generated_steps_when_asked():
    from tests.jsd_loss.generation.test_generate import _model

    ig, pad = -100, 0
    batch = {"tokens": torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [1, 3, 4, 9, pad, pad, pad, pad, pad, pad]]),
             "labels": torch.tensor([[ig] * 9 + [14], [ig, ig, ig, 9] + [ig] * 6]),
             "row_ids": torch.tensor([[0] * 10, [1] * 4 + [-1] * 6])}
    model = _model()
    for mode in ("error", "skip"):
        op = OnPolicy(OnPolicyConfig(lmbda=1.0, max_new_tokens=8, long_prompts=mode), seed=0, rank=0, stop_tokens=[],
                      pad_id=pad, max_seq_len=10, ignore_index=ig, device=torch.device("cpu"))
        op.begin_step(1)
        if mode == "error":
            with pytest.raises(ValueError, match="a prompt of row 0 leaves no room to generate within max_seq_len=10"):
                op.batch(batch, model, None)
            continue
        out = op.batch(batch, model, None)
    # row 0 (9 prompt tokens of at most 8): one token, no label; row 1: its 3 prompt tokens and 7 new ones
    assert out["tokens"][0, :1].tolist() == [5] and (out["labels"][0] == ig).all()
    assert out["tokens"][1, :3].tolist() == [1, 3, 4] and (out["labels"][1, 3:] != ig).sum() == 7
    assert op.metrics()["skipped_prompts"] == 1 and op.metrics()["generated_tokens"] == 7
