"""The ``on_policy`` block of a distillation config (GKD: the student's own samples, or the
teacher's, in place of the dataset's responses), checked before anything is built, and the
check of the rows a run draws: every prompt must leave room to generate."""

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from jsd_loss.generation import check_sampling


@dataclass(frozen=True)
class OnPolicyConfig:
    """
    Args:
        lmbda (float): probability, drawn once per optimizer step, that the step trains on the
            student's own samples for its batches' prompts. Default: 0.0
        max_new_tokens (int): most tokens generated per row (fewer where the prompt and
            they would exceed ``tokenizer.max_seq_len``). Default: 128
        temperature (float): sampling temperature (0: greedy). Default: 1.0
        top_k (Optional[int]): sample among the most probable tokens only. Default: None
        seq_kd (bool): on the other steps, the teacher's samples instead of the dataset's
            responses (sequence-level KD). Default: False
        ce_on_generated (bool): keep the CE term on generated tokens (by default a step on
            generated tokens trains ``kd_ratio * KD`` alone). Default: False
        log_samples (bool): write every generated row to ``<log_dir>/samples.jsonl``
            (rank 0's). Default: False
        long_prompts (str): a row whose prompt leaves no room to generate within
            ``tokenizer.max_seq_len`` (the tokenizer truncated it): ``"error"`` refuses the run
            at setup, naming the rows; ``"skip"`` leaves such rows out of generated steps (they
            train on data steps only). Default: "error"
    """

    lmbda: float = 0.0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: Optional[int] = None
    seq_kd: bool = False
    ce_on_generated: bool = False
    log_samples: bool = False
    long_prompts: str = "error"

    @property
    def active(self) -> bool:
        """Whether any step can train on generated tokens."""
        return self.lmbda > 0 or self.seq_kd

    def identity(self) -> Dict[str, Any]:
        """What a resumed run must keep: every field but ``log_samples`` (which changes no step)."""
        return {k: v for k, v in asdict(self).items() if k != "log_samples"}


_KEYS = tuple(OnPolicyConfig.__dataclass_fields__)


def _generating_keys(c: OnPolicyConfig) -> str:
    return " and ".join(k for k, on in ((f"on_policy.lmbda={c.lmbda}", c.lmbda > 0),
                                        ("on_policy.seq_kd=True", c.seq_kd)) if on)


def on_policy_config(cfg: DictConfig) -> Optional[OnPolicyConfig]:
    """The checked ``on_policy`` block of ``cfg`` (None when absent).

    Raises:
        ValueError: naming the key, for unknown keys or bad values (``lmbda`` outside [0, 1],
            ``max_new_tokens`` below 1 or not below ``tokenizer.max_seq_len``, a negative
            temperature, ``top_k`` below 1), and, when a step can generate, naming both keys,
            for what cannot work with it: a ``teacher_cache`` (it holds the teacher only at the
            dataset's tokens, so cannot score fresh samples), a packed dataset, feature
            distillation, ``dataset.train_on_input`` (no prompt to generate from) or no
            ``tokenizer.max_seq_len``.
    """
    node = cfg.get("on_policy", None)
    if node is None:
        return None
    if not isinstance(node, (dict, DictConfig)):
        raise ValueError(f"on_policy must be a mapping of {', '.join(_KEYS)}; got {node!r}")
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ValueError(f"on_policy has unknown keys {unknown}; it takes {', '.join(_KEYS)}")
    c = OnPolicyConfig(**raw)
    if isinstance(c.lmbda, bool) or not isinstance(c.lmbda, (int, float)) or not 0.0 <= c.lmbda <= 1.0:
        raise ValueError(f"on_policy.lmbda must be in [0, 1] (the probability of a step on the student's "
                         f"own samples), got {c.lmbda!r}")
    if isinstance(c.max_new_tokens, bool) or not isinstance(c.max_new_tokens, int) or c.max_new_tokens < 1:
        raise ValueError(f"on_policy.max_new_tokens must be an integer >= 1, got {c.max_new_tokens!r}")
    try:
        check_sampling(c.temperature, c.top_k)
    except ValueError as e:
        raise ValueError(f"on_policy.{e}") from None
    for key in ("seq_kd", "ce_on_generated", "log_samples"):
        if not isinstance(getattr(c, key), bool):
            raise ValueError(f"on_policy.{key} must be True or False, got {getattr(c, key)!r}")
    if c.long_prompts not in ("error", "skip"):
        raise ValueError(f"on_policy.long_prompts must be 'error' or 'skip', got {c.long_prompts!r}")
    if not c.active:
        return c
    keys = _generating_keys(c)
    if cfg.get("teacher_cache", None):
        raise ValueError(
            f"{keys} trains on generated tokens, which need the live teacher's logits, but "
            f"teacher_cache={cfg.teacher_cache} holds the teacher only at the dataset's tokens and cannot "
            "score fresh samples: remove teacher_cache, or set on_policy.lmbda: 0 and on_policy.seq_kd: False"
        )
    dataset = cfg.get("dataset", {}) or {}
    if dataset.get("packed", False):
        raise ValueError(f"{keys} with dataset.packed=True is not supported (a pack holds several rows, each "
                         "of whose responses would be generated): set dataset.packed: False")
    if dataset.get("train_on_input", False):
        raise ValueError(f"{keys} with dataset.train_on_input=True: the prompt is trained too, so a row has no "
                         "prompt to generate from; set dataset.train_on_input: False")
    if cfg.get("feature_distillation", None):
        raise ValueError(f"{keys} with feature_distillation is not supported (the feature term counts a "
                         "step's tokens before its batches are generated): remove one of them")
    max_seq_len = OmegaConf.select(cfg, "tokenizer.max_seq_len", default=None)
    if max_seq_len is None:
        raise ValueError(f"{keys} needs tokenizer.max_seq_len: prompt and generated tokens are kept within it")
    if c.max_new_tokens >= max_seq_len:
        raise ValueError(f"on_policy.max_new_tokens={c.max_new_tokens} leaves no room for a prompt within "
                         f"tokenizer.max_seq_len={max_seq_len}")
    return c


def prompt_length(labels: Sequence[int], ignore_index: int) -> Optional[int]:
    """Tokens before a row's first label (its prompt), or None when no position is labelled."""
    return next((i for i, label in enumerate(labels) if label != ignore_index), None)


def prompt_fits(length: int, max_seq_len: int) -> bool:
    """Whether a prompt of ``length`` tokens leaves room to generate within ``max_seq_len``:
    two positions free (a prompt the tokenizer truncated has its first label, the kept end
    token, at the last position)."""
    return length <= max_seq_len - 2


def check_prompts(dataset: Any, rows: Iterable[int], *, max_seq_len: int, ignore_index: int) -> None:
    """Every row of ``rows`` (items of ``dataset`` with ``tokens`` and ``labels``) has a
    prompt (tokens before its first label) of at least one token that leaves room to generate
    within ``max_seq_len`` (:func:`prompt_fits`).

    Raises:
        ValueError: naming the first offending rows and how many there are.
    """
    no_label: List[int] = []
    no_prompt: List[int] = []
    too_long: List[tuple] = []
    for row in rows:
        p = prompt_length(dataset[row]["labels"], ignore_index)
        if p is None:
            no_label.append(row)
        elif p == 0:
            no_prompt.append(row)
        elif not prompt_fits(p, max_seq_len):
            too_long.append((row, p))
    if too_long:
        first = ", ".join(f"row {r} ({p} tokens)" for r, p in too_long[:5])
        raise ValueError(
            f"on_policy: {len(too_long)} of the rows this run draws have a prompt longer than "
            f"tokenizer.max_seq_len={max_seq_len} allows with room to generate (at most {max_seq_len - 2} "
            f"tokens; the tokenizer truncated them): {first}. Raise tokenizer.max_seq_len, drop those rows, "
            "or set on_policy.long_prompts: skip (they then train on data steps only)"
        )
    if no_prompt:
        raise ValueError(f"on_policy: {len(no_prompt)} rows have no prompt (their first token is already a "
                         f"label), first: {no_prompt[:5]}; nothing to generate from")
    if no_label:
        raise ValueError(f"on_policy: {len(no_label)} rows have no labelled position, so no prompt ends, "
                         f"first: {no_label[:5]}")
