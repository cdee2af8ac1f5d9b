"""Int8 weight-only quantisation against a hand-written per-channel symmetric int8 reference
(float64), on a linear layer and a tiny SmolLM2-architecture model."""

import pytest
import torch
from torch import nn
from torchtune.modules import TiedLinear

from jsd_loss.export import quantize, quantize_int8_weight_only, untie_output
from jsd_loss.models.smollm2 import smollm2_from_hf_state
from tests.jsd_loss.pruning._tiny import tiny_teacher, tokens


def _int8_reference(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 over [-128, 127]: scale = max|w| / 127.5,
    q = round(w * (1 / scale)) (in float32, as torchao computes it: a row's -max then lands
    just inside -127.5 and rounds to -127), dequantised in float64. An all-zero row (the
    tiny models' padding embedding) gets the smallest scale, eps, and stays zero."""
    w = weight.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127.5).clamp(min=torch.finfo(torch.float32).eps)
    return (w * (1 / scale)).round().clamp(-128, 127).double() * scale.double()


def test_quantized_linear_matches_int8_reference():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=False)
    x = torch.randn(5, 64)
    expected = x.double() @ _int8_reference(linear.weight.detach()).T
    plain = x.double() @ linear.weight.detach().double().T
    holder = nn.Sequential(linear)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(holder, Int8WeightOnlyConfig(version=2))
    with torch.no_grad():
        got = holder(x).double()
    assert type(holder[0].weight) is not nn.Parameter or type(holder[0].weight.data) is not torch.Tensor
    # the int8 rounding is visible (so the layer really is quantised) ...
    assert (plain - expected).abs().max() > 1e-4
    # ... and the quantised layer computes exactly the reference's rounding
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_untie_output_copies_the_embeddings_into_a_linear():
    config, state, _ = tiny_teacher()
    model = smollm2_from_hf_state(config, state).eval()
    assert isinstance(model.output, TiedLinear)
    x = tokens()
    with torch.no_grad():
        before = model(x)
        untie_output(model)
        after = model(x)
    assert isinstance(model.output, nn.Linear)
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    torch.testing.assert_close(after, before)


def test_quantized_model_matches_the_model_with_int8_rounded_weights():
    """The quantised model == the fp32 model whose every linear weight (output projection
    included, embedding lookup not) is replaced by its float64 int8 rounding."""
    config, state, _ = tiny_teacher()
    model = smollm2_from_hf_state(config, state).eval()
    reference = smollm2_from_hf_state(config, state).eval()
    untie_output(reference)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(_int8_reference(module.weight).float())
    quantize_int8_weight_only(model)
    x = tokens()
    with torch.no_grad():
        got, expected = model(x), reference(x)
        plain = smollm2_from_hf_state(config, state).eval()(x)
    assert (plain - expected).abs().max() > 1e-4
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.tok_embeddings.weight, reference.tok_embeddings.weight)


def test_unknown_quantization_is_refused():
    config, state, _ = tiny_teacher()
    with pytest.raises(ValueError, match="unknown quantize method 'int4'"):
        quantize(smollm2_from_hf_state(config, state), "int4")
