"""Export a HF Llama directory (a SmolLM2 teacher or a distilled student) to one GGUF file.

The inverse of :func:`jsd_loss.prepare.read_gguf`: llama.cpp's tensor names, q/k rows back
in the interleaved rotary layout, the ``llama.*`` shape and the tokenizer as metadata.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import gguf
import numpy as np
import torch

from jsd_loss.checkpointing import atomic_file, load_state_dict, read_config
from jsd_loss.export._llama_layout import LlamaShape, check_weights, gguf_tensors, llama_shape
from jsd_loss.export._tokenizer import GGUFTokenizer, read_hf_tokenizer

log = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
# --type -> (the type of 2-D weights, general.file_type); 1-D norms stay float32 in every
# type, as llama.cpp's converter keeps them
EXPORT_TYPES = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


@dataclass
class ExportSummary:
    """What :func:`export_gguf` wrote."""

    path: Path
    out_type: str
    tensor_types: Dict[str, int]  # GGML type name -> number of tensors stored in it
    size_bytes: int


def encode_tensor(name: str, w: torch.Tensor, out_type: str) -> Tuple[np.ndarray, Q]:
    """One weight as the bytes GGUF stores.

    Args:
        name (str): the GGUF tensor name (for messages).
        w (torch.Tensor): float32 weight, HF shape ``(out, in)`` or ``(dim,)``.
        out_type (str): ``"f32"``, ``"f16"`` or ``"q8_0"``.

    Returns:
        Tuple[np.ndarray, GGMLQuantizationType]: the array (float32, float16, or uint8 blocks
        of shape ``(out, in // 32 * 34)`` for Q8_0) and its type. A Q8_0 weight whose rows
        are not a multiple of 32 long falls back to F16, as llama.cpp's converter does.

    Raises:
        ValueError: for non-finite values, or values beyond float16's range in F16.
    """
    array = w.detach().cpu().numpy()
    if not np.isfinite(array).all():
        raise ValueError(f"tensor {name} holds non-finite values")
    qtype = EXPORT_TYPES[out_type][0] if array.ndim == 2 else Q.F32
    if qtype == Q.Q8_0:
        try:
            return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0
        except gguf.quants.QuantError:  # rows not a multiple of 32 (export_gguf warns once)
            qtype = Q.F16
    if qtype == Q.F16:
        if np.abs(array).max() > np.finfo(np.float16).max:
            raise ValueError(f"tensor {name} has values beyond float16's range (|w| > 65504); use --type f32")
        return array.astype(np.float16), Q.F16
    return array, Q.F32


def _add_model_metadata(writer: gguf.GGUFWriter, shape: LlamaShape, name: str, out_type: str) -> None:
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    # transformers' GGUF loader reads head_dim from here; llama.cpp from key/value_length
    writer.add_rope_dimension_count(shape.head_dim)
    if not shape.head_dim_is_derived:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_file_type(EXPORT_TYPES[out_type][1])
    if out_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, tok: GGUFTokenizer) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.token_types)
    writer.add_token_merges(tok.merges)
    for token_id, add in ((tok.bos_id, writer.add_bos_token_id), (tok.eos_id, writer.add_eos_token_id),
                          (tok.unk_id, writer.add_unk_token_id), (tok.pad_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_space_prefix(False)  # both known pre-tokenizers are ByteLevel(add_prefix_space=False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _write(path: Path, shape: LlamaShape, tok: GGUFTokenizer, tensors: List[Tuple[str, np.ndarray, Q]],
           name: str, out_type: str) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    try:
        _add_model_metadata(writer, shape, name, out_type)
        _add_tokenizer_metadata(writer, tok)
        for tensor_name, array, qtype in tensors:
            writer.add_tensor(tensor_name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def export_gguf(model_dir: Path, output: Path, out_type: str = "f16", overwrite: bool = False) -> ExportSummary:
    """Write a HF Llama directory as a llama.cpp GGUF file.

    Every check (config, tokenizer, weight shapes, encodability) runs before the file is
    opened; the file is written beside ``output`` and renamed into place, so a failure
    never leaves a partial file at ``output``.

    Args:
        model_dir (Path): HF directory (``config.json``, safetensors, ``tokenizer.json``).
        output (Path): the ``.gguf`` file to write.
        out_type (str): ``"f32"``, ``"f16"`` or ``"q8_0"`` for 2-D weights. Default: "f16"
        overwrite (bool): replace an existing ``output``. Default: False

    Returns:
        ExportSummary: the path, tensor-type counts and file size.

    Raises:
        FileNotFoundError: missing directory, config, weights or tokenizer.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        ValueError: a type, architecture, shape or tokenizer GGUF cannot state.
    """
    model_dir, output = Path(model_dir), Path(output)
    if out_type not in EXPORT_TYPES:
        raise ValueError(f"unknown GGUF type {out_type!r}; choose one of {sorted(EXPORT_TYPES)}")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    config = read_config(model_dir)
    shape = llama_shape(config)
    tokenizer = read_hf_tokenizer(model_dir, shape.vocab_size)
    state_dict = load_state_dict(model_dir)
    check_weights(config, state_dict, shape, str(model_dir))
    tensors = [(name, *encode_tensor(name, w, out_type)) for name, w in gguf_tensors(state_dict, shape)]
    del state_dict
    fallbacks = [name for name, array, qtype in tensors if out_type == "q8_0" and qtype == Q.F16]
    if fallbacks:
        log.warning("%d weights have rows that are not whole Q8_0 blocks of 32 values and are stored as F16, "
                    "e.g. %s", len(fallbacks), ", ".join(fallbacks[:3]))
    with atomic_file(output, overwrite=overwrite) as tmp:
        _write(tmp, shape, tokenizer, tensors, model_dir.resolve().name, out_type)
    summary = ExportSummary(
        path=output,
        out_type=out_type,
        tensor_types=dict(Counter(qtype.name for _, _, qtype in tensors)),
        size_bytes=output.stat().st_size,
    )
    log.info("wrote %s: %d tensors %s, %.1f MB", output, len(tensors), summary.tensor_types,
             summary.size_bytes / 1e6)
    return summary
