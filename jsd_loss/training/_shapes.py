"""The shape of a model as its config builds it, against the shape its checkpoint's
``config.json`` describes: a mismatch is refused before any weights are read (a pruned
student can have any width, so a config built for another shape is an easy mistake). So are
rotary embeddings (base, Llama 3 frequency scaling) and an output projection tied or not
unlike the checkpoint's: they change the logits without changing any weight's shape."""

from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn
from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE
from torchtune.modules import RotaryPositionalEmbeddings, TiedLinear

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


# Llama 3 rope scaling: HF's ``rope_scaling`` key -> torchtune's Llama3ScaledRoPE attribute
_LLAMA3_SCALING = {
    "factor": "scale_factor",
    "low_freq_factor": "low_freq_factor",
    "high_freq_factor": "high_freq_factor",
    "original_max_position_embeddings": "old_context_len",
}


def _rope(pos: nn.Module) -> Optional[Dict[str, Any]]:
    if isinstance(pos, Llama3ScaledRoPE):
        scaling = {"rope_type": "llama3", **{k: float(getattr(pos, a)) for k, a in _LLAMA3_SCALING.items()}}
        return {"rope_theta": float(pos.base), "rope_scaling": scaling}
    if isinstance(pos, RotaryPositionalEmbeddings):
        return {"rope_theta": float(pos.base), "rope_scaling": None}
    return None  # a family's own rotary embeddings: not compared


def model_rope(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The rotary embeddings of a torchtune decoder as HF's config would state them
    (``rope_theta``, ``rope_scaling``: None for plain RoPE), or None for rotary embeddings
    of a kind not known here; per-layer values as a list when the layers differ."""
    try:
        ropes = [_rope(layer.attn.pos_embeddings) for layer in model.layers]
    except AttributeError:
        return None
    return None if any(r is None for r in ropes) else _same_for_all(ropes)


def hf_config_rope(hf_config: dict, where: str = "config.json") -> Dict[str, Any]:
    """The rotary embeddings a Llama-style ``config.json`` states: ``rope_theta`` and
    ``rope_scaling`` (the hub's layout) or ``rope_parameters`` (transformers 5's); a value the
    file does not state is absent from the result."""
    params = dict(hf_config.get("rope_parameters") or {})
    scaling = dict(hf_config.get("rope_scaling") or params)
    rope = {}
    theta = hf_config.get("rope_theta", params.get("rope_theta"))
    if theta is not None:
        rope["rope_theta"] = float(theta)
    if "rope_scaling" in hf_config or params:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            rope["rope_scaling"] = None
        elif kind == "llama3":
            missing = [k for k in _LLAMA3_SCALING if k not in scaling]
            if missing:
                raise ValueError(f"{where}: llama3 rope scaling lacks {missing}")
            rope["rope_scaling"] = {"rope_type": "llama3", **{k: float(scaling[k]) for k in _LLAMA3_SCALING}}
        else:
            rope["rope_scaling"] = {k: v for k, v in scaling.items() if k != "rope_theta"}
    return rope


def _check_rope_and_output(model: nn.Module, hf_config: dict, who: str, where: str) -> None:
    built, described = model_rope(model), hf_config_rope(hf_config, where)
    if built is not None:
        per_layer = built if isinstance(built, list) else [built]
        diff = sorted({k for r in per_layer for k in described if r[k] != described[k]})
        if diff:
            raise ValueError(
                f"the {who} model config does not build the rotary embeddings of its checkpoint: the config "
                f"builds {built}; {where} states " + ", ".join(f"{k}={described[k]}" for k in diff)
                + " (the weights would load but every logit would differ)"
            )
    tied, output = hf_config.get("tie_word_embeddings"), getattr(model, "output", None)
    if tied is not None and output is not None and bool(tied) != isinstance(output, TiedLinear):
        raise ValueError(
            f"the {who} model config builds an output projection {'untied from' if tied else 'tied to'} the "
            f"token embeddings ({type(output).__name__}); {where} has tie_word_embeddings={tied}"
        )


def _fmt(shape: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={shape[k]}" for k in SHAPE_KEYS)


def check_model_shape(model: nn.Module, hf_config: dict, who: str, checkpoint_dir: Path) -> None:
    """
    Refuse a model whose shape, rotary embeddings (``rope_theta``, ``rope_scaling``) or output
    tying (``tie_word_embeddings``) differ from its checkpoint's ``config.json`` (what the file
    does not state is not compared).

    Args:
        model (nn.Module): the model as its config builds it (on meta: no memory).
        hf_config (dict): the checkpoint directory's ``config.json``.
        who (str): "student" or "teacher", for the message.
        checkpoint_dir (Path): the checkpoint directory, for the message.

    Raises:
        ValueError: naming what differs and both shapes in full, or the rotary embeddings or
            the output tying that differ.
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
    _check_rope_and_output(model, hf_config, who, where)
