"""Int8 weight-only quantisation of a (distilled) model for inference, with torchao."""

import torch
from torch import nn
from torchtune.modules import TiedLinear, TransformerDecoder

# what the eval recipe's ``quantize`` key accepts
QUANTIZATIONS = ("int8_weight_only",)


def untie_output(model: TransformerDecoder) -> TransformerDecoder:
    """Gives a model with tied embeddings its own ``nn.Linear`` output projection holding a
    copy of the embedding matrix, so that quantisation, which rewrites ``nn.Linear`` modules
    only, reaches the largest matmul too (49152 x 576 of SmolLM2's 88M parameters); the
    embedding lookup keeps the unquantised matrix."""
    if isinstance(model.output, TiedLinear):
        weight = model.output.tied_module.weight
        output = nn.Linear(weight.size(1), weight.size(0), bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            output.weight.copy_(weight)
        model.output = output
    return model


def quantize_int8_weight_only(model: TransformerDecoder) -> TransformerDecoder:
    """
    Every linear layer's weight stored as int8 with one float scale per output channel
    (symmetric: scale = max|w| / 127.5, q = round(w / scale) in [-128, 127]), activations
    left in the model's dtype: torchao's ``Int8WeightOnlyConfig`` (version 2).
    The output projection is untied first (:func:`untie_output`). For inference only: the
    quantised weights take no gradients.

    Args:
        model (TransformerDecoder): a model in eval mode, fp32 or bf16, on CPU or CUDA.

    Returns:
        TransformerDecoder: the same model object, quantised in place.
    """
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    untie_output(model)
    quantize_(model, Int8WeightOnlyConfig(version=2))
    return model


def quantize(model: TransformerDecoder, method: str) -> TransformerDecoder:
    """``model`` quantised by ``method``, one of :data:`QUANTIZATIONS`."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantize method {method!r}; known: {list(QUANTIZATIONS)}")
    return quantize_int8_weight_only(model)
