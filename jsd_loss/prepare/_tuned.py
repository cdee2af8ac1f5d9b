"""``python -m jsd_loss.prepare tuned-teacher``: a LoRA-tuned teacher as a plain HF directory.

torchtune's stock ``lora_finetune_single_device`` recipe saves each epoch's *merged* weights
as ``model-00001-of-00001.safetensors`` (with an index and the adapter beside them). This step
checks that directory against the base teacher it was tuned from (same architecture, same
tokenizer, no unmerged adapter tensors, weights actually changed) and writes a standard HF
directory (``model.safetensors``) that every config here takes as ``teacher_dir``.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict

import torch

from jsd_loss.checkpointing import (
    atomic_directory,
    check_llama_dims,
    load_state_dict,
    read_config,
    sha256_file,
    sha256_files,
    weight_files,
    write_model_dir,
)
from jsd_loss.prepare._manifest import MANIFEST, refuse_foreign_output, verified_manifest, write_manifest

log = logging.getLogger(__name__)

# config.json keys that fix the architecture (and so must equal the base teacher's)
ARCHITECTURE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "vocab_size", "rope_theta", "tie_word_embeddings")
ADAPTER_CONFIG = "adapter_config.json"


def weight_change(tuned: Dict[str, torch.Tensor], base: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per tensor: ``||tuned - base|| / ||base||`` (0 for the tensors the tuning left alone)."""
    change = {}
    for key, b in base.items():
        diff = (tuned[key].double() - b.double()).norm()
        change[key] = float(diff / b.double().norm().clamp_min(1e-30))
    return change


def _digest_before_v2(files) -> str:
    """The source digest manifests recorded before it became :func:`sha256_files` (a SHA-256 of
    the files' hex digests): such an output is still recognised, not refused as foreign."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def prepare_tuned_teacher(lora_dir: Path, base_dir: Path, output_dir: Path, overwrite: bool = False) -> Path:
    """Write the merged LoRA checkpoint in ``lora_dir`` as a HF directory at ``output_dir``.

    Idempotent (a complete output made from the same weights is kept) and atomic.

    Raises:
        FileNotFoundError: a directory or its weights are missing.
        ValueError: naming the problem, if the weights hold unmerged adapter tensors, the
            architecture or tokenizer differ from ``base_dir``'s, or no weight changed.
    """
    lora_dir, base_dir, output_dir = Path(lora_dir), Path(base_dir), Path(output_dir)
    tuned_config, base_config = read_config(lora_dir), read_config(base_dir)
    files = weight_files(lora_dir)
    digest = sha256_files(files)
    if verified_manifest(output_dir, kind="tuned_teacher", source_sha256=digest) or (
            (output_dir / MANIFEST).is_file()  # the weights are hashed again only to compare with one
            and verified_manifest(output_dir, kind="tuned_teacher", source_sha256=_digest_before_v2(files))):
        log.info("%s already holds the tuned teacher from %s; nothing to do", output_dir, lora_dir)
        return output_dir
    refuse_foreign_output(output_dir, overwrite)
    differ = [f"{k}: {tuned_config.get(k)!r} vs {base_config.get(k)!r}" for k in ARCHITECTURE_KEYS
              if tuned_config.get(k) != base_config.get(k)]
    if differ:
        raise ValueError(f"{lora_dir} is not a tuning of {base_dir}: config.json differs in " + "; ".join(differ))
    tokenizer = lora_dir / "tokenizer.json"
    if tokenizer.is_file() and sha256_file(tokenizer) != sha256_file(base_dir / "tokenizer.json"):
        raise ValueError(f"{tokenizer} differs from {base_dir / 'tokenizer.json'}: the tuned teacher must keep "
                         "the base tokenizer (students and caches are checked against it)")
    tuned = load_state_dict(lora_dir)
    adapters = sorted(k for k in tuned if "lora_" in k or "magnitude" in k)
    if adapters:
        raise ValueError(f"{lora_dir} holds unmerged adapter tensors ({adapters[:3]}...): save the merged model "
                         "(the stock recipe's save_adapter_weights_only: False)")
    base = load_state_dict(base_dir)
    if set(tuned) != set(base):
        raise ValueError(f"{lora_dir} and {base_dir} hold different tensors: only in the tuned one "
                         f"{sorted(set(tuned) - set(base))[:5]}, only in the base {sorted(set(base) - set(tuned))[:5]}")
    check_llama_dims(tuned_config, tuned, str(lora_dir))
    shapes = [k for k in base if tuned[k].shape != base[k].shape]
    if shapes:
        raise ValueError(f"{lora_dir}: tensor shapes differ from the base teacher's at {shapes[:5]}")
    change = weight_change(tuned, base)
    changed = sorted(k for k, v in change.items() if v > 0)
    if not changed:
        raise ValueError(f"{lora_dir} holds the base teacher's weights unchanged: the adapter was not merged "
                         "or the run did not train")
    adapter_path = lora_dir / ADAPTER_CONFIG
    adapter = json.loads(adapter_path.read_text()) if adapter_path.is_file() else None
    with atomic_directory(output_dir, overwrite=True) as tmp:
        write_model_dir(tmp, tuned, tuned_config, copy_from=base_dir)
        write_manifest(tmp, {
            "kind": "tuned_teacher", "source": str(lora_dir), "source_sha256": digest, "base": str(base_dir),
            "adapter_config": adapter, "tensors_changed": len(changed), "tensors": len(change),
            "max_relative_change": max(change.values()),
        })
    log.info("wrote the tuned teacher to %s (%d of %d tensors changed, at most %.2e relative)",
             output_dir, len(changed), len(change), max(change.values()))
    return output_dir
