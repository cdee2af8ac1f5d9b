"""The shape of a model as its config builds it, against the shape its checkpoint's
``config.json`` describes: a mismatch is refused before any weights are read (a pruned
student can have any width, so a config built for another shape is an easy mistake)."""

from pathlib import Path
from typing import Any, Dict

from torch import nn

SHAPE_KEYS = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "intermediate_dim", "vocab")


def _same_for_all(values: list) -> Any:
    """One value when every layer agrees, else the per-layer list."""
    return values[0] if all(v == values[0] for v in values) else values


def model_shape(model: nn.Module) -> Dict[str, Any]:
    """The shape of a torchtune decoder, read from its modules (the meta device will do):
    per-layer values are given once when all layers agree, as a list otherwise."""
    try:
        layers = list(model.layers)
        attn = [layer.attn for layer in layers]
        shape = {
            "num_layers": len(layers),
            "embed_dim": model.tok_embeddings.embedding_dim,
            "num_heads": _same_for_all([a.num_heads for a in attn]),
            "num_kv_heads": _same_for_all([a.num_kv_heads for a in attn]),
            "head_dim": _same_for_all([a.head_dim for a in attn]),
            "intermediate_dim": _same_for_all([layer.mlp.w1.weight.shape[0] for layer in layers]),
            "vocab": model.tok_embeddings.num_embeddings,
        }
    except AttributeError as e:
        raise ValueError(f"cannot read the shape of a {type(model).__name__}: {e}") from e
    return shape


def hf_config_shape(hf_config: dict, where: str = "config.json") -> Dict[str, Any]:
    """The shape a Llama-style HF ``config.json`` describes (``head_dim`` defaults to
    ``hidden_size / num_attention_heads``, as in transformers)."""
    try:
        heads = int(hf_config["num_attention_heads"])
        return {
            "num_layers": int(hf_config["num_hidden_layers"]),
            "embed_dim": int(hf_config["hidden_size"]),
            "num_heads": heads,
            "num_kv_heads": int(hf_config["num_key_value_heads"]),
            "head_dim": int(hf_config.get("head_dim") or int(hf_config["hidden_size"]) // heads),
            "intermediate_dim": int(hf_config["intermediate_size"]),
            "vocab": int(hf_config["vocab_size"]),
        }
    except KeyError as e:
        raise ValueError(f"{where} lacks {e.args[0]!r}") from e


def _fmt(shape: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={shape[k]}" for k in SHAPE_KEYS)


def check_model_shape(model: nn.Module, hf_config: dict, who: str, checkpoint_dir: Path) -> None:
    """
    Refuse a model whose shape differs from its checkpoint's ``config.json``.

    Args:
        model (nn.Module): the model as its config builds it (on meta: no memory).
        hf_config (dict): the checkpoint directory's ``config.json``.
        who (str): "student" or "teacher", for the message.
        checkpoint_dir (Path): the checkpoint directory, for the message.

    Raises:
        ValueError: naming what differs and both shapes in full.
    """
    where = f"{checkpoint_dir}/config.json"
    built, described = model_shape(model), hf_config_shape(hf_config, where)
    diff = [k for k in SHAPE_KEYS if built[k] != described[k]]
    if diff:
        raise ValueError(
            f"the {who} model config does not build the model of its checkpoint ("
            + "; ".join(f"{k} {built[k]} vs {described[k]}" for k in diff)
            + f"): the config builds {_fmt(built)}; {where} describes {_fmt(described)}"
        )
