"""TeacherEnsemble through the KD step on tiny models: teachers of different sizes fused in
every loss form (whole logits, chunked, fused-linear) against a float64 reference, one member
equal to the single teacher exactly, two identical members equal to one."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from jsd_loss.losses import FUSIONS
from jsd_loss.models.smollm2 import smollm2
from jsd_loss.teacher import TeacherEnsemble, teacher_members
from jsd_loss.training import kd_step, setup_losses
from tests.conftest import TINY as _TINY
from tests.jsd_loss.losses.test_teacher_fusion import reference_probs64
from tests.reference import jsd_probs64, log_softmax64

T = 1.5
TINY = {**_TINY, "vocab_size": 257}  # a small vocabulary: float32 sums agree with float64 to ~1e-7
FORMS = {
    "whole": ({"_component_": "torch.nn.CrossEntropyLoss"},
              {"_component_": "jsd_loss.JSDistillLoss", "beta": 0.4, "temperature": T}),
    "chunked": ({"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss", "num_output_chunks": 3},
                {"_component_": "jsd_loss.JSDistillWithChunkedOutputLoss", "num_output_chunks": 3, "beta": 0.4,
                 "temperature": T}),
    "fused": ({"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss", "num_output_chunks": 3},
              {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "chunk_size": 5, "beta": 0.4, "temperature": T,
               "return_ce": True}),
}


def _models():
    """A student and two teachers of other sizes (one wider, one deeper), peaked, one vocabulary
    (float32: torchtune's models return float32 logits)."""
    torch.manual_seed(0)
    student = smollm2(**TINY)
    wide = smollm2(**{**TINY, "embed_dim": 48, "num_heads": 6, "num_kv_heads": 3, "intermediate_dim": 80})
    deep = smollm2(**{**TINY, "num_layers": 3})
    for t, std in ((wide, 0.6), (deep, 0.4)):  # untied random outputs: teachers unlike each other and the student
        t.output = nn.Linear(t.tok_embeddings.embedding_dim, TINY["vocab_size"], bias=False)
        nn.init.normal_(t.output.weight, std=std)
        t.eval().requires_grad_(False)
    tokens = torch.randint(0, TINY["vocab_size"], (3, 9))
    labels = torch.randint(0, TINY["vocab_size"], (3, 9))
    labels[0, :3] = -100
    return student, wide, deep, tokens, labels


def _kd(form, student, teacher, tokens, labels):
    losses = setup_losses(*(OmegaConf.create(c) for c in FORMS[form]))
    chunks = 0 if losses.fused else losses.num_output_chunks
    for m in [student, *teacher_members(teacher)]:
        m.set_num_output_chunks(chunks)
    student.zero_grad()
    ce, kd = kd_step(student, teacher, tokens, labels, losses, dtype=torch.float32)
    kd.backward()
    grad = student.layers[0].attn.q_proj.weight.grad.clone()
    for m in [student, *teacher_members(teacher)]:
        m.set_num_output_chunks(0)
    return kd.detach(), grad


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("form", FORMS)
def test_multi_teacher_kd_step_gives_the_fused_reference_in_every_form(fusion, form):
    student, wide, deep, tokens, labels = _models()
    weights = [0.7, 0.3]
    ensemble = TeacherEnsemble([wide, deep], ["wide", "deep"], weights, fusion)
    with torch.no_grad():
        p = reference_probs64([wide(tokens), deep(tokens)], weights, fusion, T, labels)
    keep = labels != -100
    student.zero_grad()
    q = log_softmax64(student(tokens), T).exp()
    ref = (jsd_probs64(q[keep], p[keep], 0.4) * T**2).mean()
    ref.backward()
    ref_grad = student.layers[0].attn.q_proj.weight.grad.clone()
    kd, grad = _kd(form, student, ensemble, tokens, labels)
    assert kd.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_teacher_in_the_ensemble_is_the_single_teacher_exactly_and_two_identical_teachers_equal_one(fusion, form):
    student, wide, _, tokens, labels = _models()
    single = _kd(form, student, wide, tokens, labels)
    one = _kd(form, student, TeacherEnsemble([wide], ["wide"], [0.3], fusion), tokens, labels)
    assert torch.equal(one[0], single[0]) and torch.equal(one[1], single[1])
    two = _kd(form, student, TeacherEnsemble([wide, wide], ["a", "b"], [0.3, 0.9], fusion), tokens, labels)
    torch.testing.assert_close(two[0], single[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(two[1], single[1], rtol=1e-4, atol=1e-8)


def test_ensemble_refuses_mismatched_names_and_weights():
    _, wide, deep, _, _ = _models()
    with pytest.raises(ValueError, match="teacher names must be distinct"):
        TeacherEnsemble([wide, deep], ["a", "a"], [1, 1])
    with pytest.raises(ValueError, match="2 teachers, 1 names and 2 weights"):
        TeacherEnsemble([wide, deep], ["a"], [1, 1])
    assert teacher_members(None) == [] and teacher_members(wide) == [wide]
