from jsd_loss.prepare._gguf import default_gguf_path, read_gguf
from jsd_loss.prepare._student import PRUNING_FILE, default_layer_selection, prepare_student
from jsd_loss.prepare._teacher import prepare_teacher_from_gguf, prepare_teacher_from_hub
from jsd_loss.prepare._tuned import prepare_tuned_teacher

__all__ = [
    "PRUNING_FILE",
    "default_gguf_path",
    "default_layer_selection",
    "prepare_student",
    "prepare_teacher_from_gguf",
    "prepare_teacher_from_hub",
    "prepare_tuned_teacher",
    "read_gguf",
]
