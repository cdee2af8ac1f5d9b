from jsd_loss.checkpointing._atomic_file import atomic_file
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
    "TOKENIZER_FILES",
    "atomic_directory",
    "atomic_file",
    "check_llama_dims",
    "load_state_dict",
    "read_config",
    "weight_files",
    "write_model_dir",
]
