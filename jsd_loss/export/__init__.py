from jsd_loss.export._gguf_writer import EXPORT_TYPES, ExportSummary, encode_tensor, export_gguf
from jsd_loss.export._int8 import QUANTIZATIONS, quantize, quantize_int8_weight_only, untie_output
from jsd_loss.export._llama_layout import LlamaShape, gguf_tensors, llama_shape
from jsd_loss.export._tokenizer import GGUFTokenizer, read_hf_tokenizer

__all__ = [
    "EXPORT_TYPES",
    "ExportSummary",
    "GGUFTokenizer",
    "LlamaShape",
    "QUANTIZATIONS",
    "encode_tensor",
    "export_gguf",
    "gguf_tensors",
    "llama_shape",
    "quantize",
    "quantize_int8_weight_only",
    "read_hf_tokenizer",
    "untie_output",
]
