import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from jsd_loss import JSDistillWithChunkedOutputLoss
from jsd_loss.datasets import (
    PackedRowsDataset, RowIndexedDataset, collate_packed_rows, padded_collate_sft_with_row_ids,
)
from jsd_loss.models.smollm2 import smollm2
from jsd_loss.training import hidden_state_output, kd_step, output_weight, setup_losses, steps_per_epoch
from tests.conftest import TINY
from tests.jsd_loss.datasets.fakes import RowsDataset, random_rows
from tests.reference import jsd64, log_softmax64


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


@pytest.mark.parametrize("kd_cfg", [CHUNKED, FUSED, {**FUSED, "return_ce": True}], ids=["chunked", "fused", "fused_ce"])
def test_a_packed_batch_with_a_dense_mask_gives_the_token_mean_of_its_rows_run_alone(kd_cfg):
    """The recipe's path for ``dataset.packed=True`` on CPU: dense bool block-causal mask and
    per-document positions, labels shifted as the recipe shifts them."""
    student, teacher, _, _ = _models()
    rows = random_rows(9, 12, seed=4, vocab=TINY["vocab_size"])
    ds = PackedRowsDataset(RowsDataset(rows), max_seq_len=24)
    packed = collate_packed_rows([ds[i] for i in range(len(ds))])
    unpacked = padded_collate_sft_with_row_ids([RowIndexedDataset(RowsDataset(rows))[i] for i in range(len(rows))])
    assert packed["mask"].dtype == torch.bool and len(ds) < len(rows)
    losses = setup_losses(OmegaConf.create(CE), OmegaConf.create(kd_cfg))
    if not losses.fused:
        student.set_num_output_chunks(losses.num_output_chunks)
        teacher.set_num_output_chunks(losses.num_output_chunks)
    shift = lambda labels: torch.cat([labels[..., 1:], torch.full_like(labels[..., :1], -100)], -1)
    with torch.no_grad():
        ce, kd = kd_step(student, teacher, packed["tokens"], shift(packed["labels"]), losses, dtype=torch.float32,
                         mask=packed["mask"], input_pos=packed["input_pos"])
        ce_rows, kd_rows = kd_step(student, teacher, unpacked["tokens"], shift(unpacked["labels"]), losses,
                                   dtype=torch.float32)
    assert ce.item() == pytest.approx(ce_rows.item(), rel=1e-6) and kd.item() == pytest.approx(kd_rows.item(), rel=1e-6)
    student.set_num_output_chunks(0), teacher.set_num_output_chunks(0)
    ce_sum = kd_sum = count = 0
    for r in rows:  # reference: each row alone, float64 losses from the definitions
        tokens, labels = torch.tensor([r["tokens"]]), shift(torch.tensor(r["labels"]))
        with torch.no_grad():
            logits, teacher_logits = student(tokens)[0], teacher(tokens)[0]
        at = labels != -100
        ce_sum += -log_softmax64(logits[at]).gather(1, labels[at, None]).sum()
        kd_sum += jsd64(logits[at], teacher_logits[at], beta=0.5).sum()
        count += int(at.sum())
    assert count > 20
    # the fused losses' float32 closed forms are within ~1e-5 of the float64 definition
    assert ce.item() == pytest.approx(float(ce_sum / count), rel=5e-5)
    assert kd.item() == pytest.approx(float(kd_sum / count), rel=5e-5) and 0 < kd.item() < 0.6932


class ChunkedWithChunkSize(JSDistillWithChunkedOutputLoss):
    chunk_size = 16
