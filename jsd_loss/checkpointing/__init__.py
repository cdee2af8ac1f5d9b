from jsd_loss.checkpointing._atomic_file import atomic_file
from jsd_loss.checkpointing._checksums import (
    CHECKSUMS,
    ChecksumError,
    read_checksums,
    sha256_file,
    sha256_files,
    verify_directory,
    verify_file,
    write_checksums,
)
from jsd_loss.checkpointing._hf_dir import (
    TOKENIZER_FILES,
    atomic_directory,
    check_llama_dims,
    load_state_dict,
    read_config,
    weight_files,
    write_model_dir,
)

__all__ = [
    "CHECKSUMS",
    "ChecksumError",
    "TOKENIZER_FILES",
    "atomic_directory",
    "atomic_file",
    "check_llama_dims",
    "load_state_dict",
    "read_checksums",
    "read_config",
    "sha256_file",
    "sha256_files",
    "verify_directory",
    "verify_file",
    "weight_files",
    "write_checksums",
    "write_model_dir",
]
