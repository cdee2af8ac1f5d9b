"""Reading and atomically writing standard HF model directories."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jsd_loss.checkpointing._checksums import verify_file, write_checksums
from jsd_loss.checkpointing._fs import exchange, fsync_dir, fsync_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# files copied unchanged from a source model directory into a derived one
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def read_config(model_dir: Path) -> dict:
    """``config.json`` of a HF model directory, with a clear error when absent or invalid."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no {CONFIG_FILE}: not a HF model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def weight_files(model_dir: Path) -> list:
    """The safetensors files of a HF model directory (single file or sharded)."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_FILE).is_file():
        return [model_dir / WEIGHTS_FILE]
    index = model_dir / WEIGHTS_INDEX_FILE
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{model_dir} is missing weight shards {missing}")
        return [model_dir / s for s in shards]
    raise FileNotFoundError(
        f"{model_dir} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}: no HF weights to load"
    )


def load_state_dict(model_dir: Path) -> Dict[str, torch.Tensor]:
    """All tensors of a HF model directory, merged across shards; each weight file that its
    ``checksums.json`` lists (when it has one: directories written here do) verified first.

    Raises:
        ValueError: naming the file, if a weight file is not readable safetensors or differs
            from its recorded checksum (:class:`~jsd_loss.checkpointing.ChecksumError`).
    """
    files = weight_files(model_dir)
    for path in files:  # what is read: a checksums.json that torchtune copied beside new weights lists old ones
        verify_file(path)
    state_dict: Dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state_dict.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    return state_dict


@contextmanager
def atomic_directory(output_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``output_dir``; rename it into place on success.

    An exception (or a kill) leaves ``output_dir`` untouched and only a hidden
    ``.<name>.tmp-*`` directory behind, which is removed when Python unwinds. Its files and
    directory entries are flushed to disk (fsync) before the rename, and the rename before
    anything is removed. With ``overwrite`` an existing ``output_dir`` is replaced only once
    the new one is complete, by swapping the two in one step (Linux ``renameat2``), so there
    is no moment without a complete ``output_dir``; where the file system cannot swap, the old
    one is moved aside first (a kill between the two renames leaves it, complete, in a hidden
    ``.<name>.old-*`` directory beside it).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            os.chmod(f, 0o666 & ~umask)
            fsync_file(f)
        fsync_dir(tmp)
        if not output_dir.exists():
            os.replace(tmp, output_dir)
        elif not exchange(tmp, output_dir):  # tmp now holds the old directory, removed below
            trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, trash / output_dir.name)
            os.replace(tmp, output_dir)
            fsync_dir(output_dir.parent)
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(output_dir.parent)  # the new entry on disk before the old one is removed
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_dir(
    target: Path,
    state_dict: Dict[str, torch.Tensor],
    config: dict,
    copy_from: Optional[Path] = None,
    copy_files: Iterable[str] = TOKENIZER_FILES,
    extra_json: Optional[Dict[str, dict]] = None,
) -> None:
    """Write ``config.json``, ``model.safetensors`` (its size and SHA-256 in
    ``checksums.json``) and companions into ``target``.

    Meant to be called on the directory yielded by :func:`atomic_directory`.
    """
    target = Path(target)
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    contiguous = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(contiguous, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    write_checksums(target, [WEIGHTS_FILE])
    if copy_from is not None:
        for name in copy_files:
            src = Path(copy_from) / name
            if src.is_file():
                shutil.copy2(src, target / name)
    for name, obj in (extra_json or {}).items():
        (target / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_llama_dims(config: dict, state_dict: Dict[str, torch.Tensor], where: str) -> None:
    """Raise a clear error when a Llama-style ``config.json`` disagrees with the weights."""
    try:
        d = int(config["hidden_size"])
        heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
        vocab, ffn = int(config["vocab_size"]), int(config["intermediate_size"])
        n_layers = int(config["num_hidden_layers"])
    except KeyError as e:
        raise ValueError(f"{where}/config.json lacks {e.args[0]!r}") from e
    head_dim = int(config.get("head_dim") or d // heads)
    expected = {
        "model.embed_tokens.weight": (vocab, d),
        "model.norm.weight": (d,),
    }
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, d),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, d),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, d),
            p + "self_attn.o_proj.weight": (d, heads * head_dim),
            p + "mlp.gate_proj.weight": (ffn, d),
            p + "mlp.up_proj.weight": (ffn, d),
            p + "mlp.down_proj.weight": (d, ffn),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(f"{where}: config.json implies weights missing from the checkpoint, e.g. {missing[:3]}")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise ValueError(
                f"{where}: {key} has shape {tuple(state_dict[key].shape)} but config.json implies {shape}"
            )
    extra = [k for k in state_dict if k not in expected and k != "lm_head.weight"]
    if extra:
        raise ValueError(f"{where}: weights not described by config.json, e.g. {extra[:3]}")
