from jsd_loss.export._gguf_writer import EXPORT_TYPES, ExportSummary, encode_tensor, export_gguf
from jsd_loss.export._llama_layout import LlamaShape, gguf_tensors, llama_shape
from jsd_loss.export._tokenizer import GGUFTokenizer, read_hf_tokenizer

__all__ = [
    "EXPORT_TYPES",
    "ExportSummary",
    "GGUFTokenizer",
    "LlamaShape",
    "encode_tensor",
    "export_gguf",
    "gguf_tensors",
    "llama_shape",
    "read_hf_tokenizer",
]
