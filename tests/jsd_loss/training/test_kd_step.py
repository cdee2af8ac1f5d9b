import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from jsd_loss import JSDistillWithChunkedOutputLoss
from jsd_loss.models.smollm2 import smollm2
from jsd_loss.training import hidden_state_output, kd_step, output_weight, setup_losses, steps_per_epoch
from tests.conftest import TINY


def test_hidden_states_times_output_weight_are_the_logits():
    torch.manual_seed(0)
    model = smollm2(**TINY).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 7))
    logits = model(tokens)
    with hidden_state_output(model):
        hidden = model(tokens)
    assert hidden.shape == (2, 7, TINY["embed_dim"])
    torch.testing.assert_close(hidden @ output_weight(model).t(), logits)
    assert output_weight(model) is model.tok_embeddings.weight  # tied
    torch.testing.assert_close(model(tokens), logits)  # restored


def test_untied_output_and_chunked_logits_are_restored():
    torch.manual_seed(0)
    model = smollm2(**TINY).eval()
    model.output = nn.Linear(TINY["embed_dim"], TINY["vocab_size"], bias=False)
    model.set_num_output_chunks(4)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 8))
    with hidden_state_output(model):
        hidden = model(tokens)
    assert output_weight(model) is model.output.weight
    chunks = model(tokens)
    assert isinstance(chunks, list) and len(chunks) == 4
    torch.testing.assert_close(torch.cat(chunks, 1), hidden @ model.output.weight.t())


CE = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss", "num_output_chunks": 4}
CHUNKED = {"_component_": "jsd_loss.JSDistillWithChunkedOutputLoss", "num_output_chunks": 4}
FUSED = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "chunk_size": 5}


def _models():
    torch.manual_seed(0)
    student, teacher = smollm2(**TINY), smollm2(**TINY)
    with torch.no_grad():
        teacher.tok_embeddings.weight.mul_(20)  # peaked teacher distributions
    tokens = torch.randint(0, TINY["vocab_size"], (2, 8))
    labels = torch.randint(0, TINY["vocab_size"], (2, 8))
    labels[0, :3] = -100
    return student, teacher, tokens, labels


def _step(kd_cfg, ce_cfg=CE):
    student, teacher, tokens, labels = _models()
    losses = setup_losses(OmegaConf.create(ce_cfg), OmegaConf.create(kd_cfg))
    if not losses.fused and losses.num_output_chunks:
        student.set_num_output_chunks(losses.num_output_chunks)
        teacher.set_num_output_chunks(losses.num_output_chunks)
    ce, kd = kd_step(student, teacher, tokens, labels, losses, dtype=torch.float32)
    (ce + kd).backward()
    return losses, ce.item(), kd.item(), student.layers[0].attn.q_proj.weight.grad.clone()


def test_fused_losses_get_hidden_states_and_give_the_chunked_numbers():
    losses, ce, kd, grad = _step(CHUNKED)
    assert not losses.fused and losses.num_output_chunks == 4 and losses.ignore_index == -100
    for fused in (FUSED, {**FUSED, "return_ce": True}):
        f_losses, f_ce, f_kd, f_grad = _step(fused)
        assert f_losses.fused
        assert f_ce == pytest.approx(ce, rel=1e-5) and f_kd == pytest.approx(kd, rel=1e-5)
        torch.testing.assert_close(f_grad, grad, rtol=1e-4, atol=1e-7)
    assert 0 < kd < 0.6932


def test_whole_logit_losses():
    _, ce, kd, _ = _step({"_component_": "jsd_loss.JSDistillLoss"}, {"_component_": "torch.nn.CrossEntropyLoss"})
    _, ce_chunked, kd_chunked, _ = _step(CHUNKED)
    assert ce == pytest.approx(ce_chunked, rel=1e-5) and kd == pytest.approx(kd_chunked, rel=1e-5)


def test_a_loss_is_fused_only_when_it_declares_the_interface():
    losses = setup_losses(OmegaConf.create(CE), OmegaConf.create(
        {"_component_": "tests.jsd_loss.training.test_kd_step.ChunkedWithChunkSize", "num_output_chunks": 4}))
    assert not losses.fused  # a chunk_size attribute no longer makes a loss fused-linear


def test_chunk_counts_must_agree():
    with pytest.raises(ValueError, match="loss has num_output_chunks=4 but kd_loss has 8"):
        setup_losses(OmegaConf.create(CE), OmegaConf.create({**CHUNKED, "num_output_chunks": 8}))
    with pytest.raises(ValueError, match="loss has num_output_chunks=4 but kd_loss has None"):
        setup_losses(OmegaConf.create(CE), OmegaConf.create({"_component_": "jsd_loss.JSDistillLoss"}))
    setup_losses(OmegaConf.create(CE), OmegaConf.create(FUSED))  # a fused loss takes no logits


def test_steps_per_epoch():
    assert steps_per_epoch(10, 2, 3, None) == 3 and steps_per_epoch(10, 2, 3, 2) == 2
    with pytest.raises(ValueError, match="the dataset gives 2 batches of 4, fewer than gradient_accumulation_steps=3"):
        steps_per_epoch(2, 4, 3, None)



class ChunkedWithChunkSize(JSDistillWithChunkedOutputLoss):
    chunk_size = 16
