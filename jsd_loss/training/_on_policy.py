"""On-policy distillation in a training step (GKD; Agarwal et al. 2024): per optimizer step a
coin with probability ``lmbda`` says whether its batches' responses are replaced by the
student's own samples (or, with ``seq_kd``, by the teacher's on the other steps); the KD step
then runs on prompt + generated tokens with the live teacher, the generated tokens as labels.

Two generators, both seeded from the run's seed and saved in every step checkpoint: the coin
(the same on every rank: every rank draws once per step) and the sampler (one per rank)."""

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from jsd_loss.generation import generate
from jsd_loss.training._on_policy_config import OnPolicyConfig, check_prompts, prompt_fits, prompt_length
from jsd_loss.training._teacher_cache import run_rows

ON_POLICY_STATE = "on_policy_rng"  # key of the recipe state: one {"coin", "sampler"} per rank
_COIN_SEED, _SAMPLER_SEED = 0x6B64, 0x67656E  # offsets from the run's seed


def batch_prompts(batch: Dict[str, torch.Tensor], ignore_index: int) -> Tuple[List[List[int]], List[int]]:
    """Each row's prompt (its tokens before its first label) and dataset row id.

    Raises:
        ValueError: for a row with no label or no prompt.
    """
    prompts, row_ids = [], []
    for i, (tokens, labels) in enumerate(zip(batch["tokens"].tolist(), batch["labels"].tolist())):
        p = prompt_length(labels, ignore_index)
        if not p:
            raise ValueError(f"on_policy: batch row {i} has {'no prompt' if p == 0 else 'no label'} to generate from")
        prompts.append(tokens[:p])
        row_ids.append(int(batch["row_ids"][i, 0]))
    return prompts, row_ids


def generated_batch(
    prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]], row_ids: Sequence[int], *,
    pad_id: int, ignore_index: int, device: torch.device,
) -> Dict[str, torch.Tensor]:
    """A right-padded batch of prompt + generated tokens, labelled (unshifted, as the dataset's
    batches are) at the generated tokens only; ``row_ids`` over each row's tokens, -1 over padding."""
    width = max(len(p) + len(g) for p, g in zip(prompts, generated))
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    labels = torch.full_like(tokens, ignore_index)
    ids = torch.full_like(tokens, -1)
    for i, (p, g) in enumerate(zip(prompts, generated)):
        n = len(p) + len(g)
        tokens[i, :n] = torch.tensor(list(p) + list(g))
        labels[i, len(p):n] = torch.tensor(list(g))
        ids[i, :n] = row_ids[i]
    return {"tokens": tokens.to(device), "labels": labels.to(device), "row_ids": ids.to(device)}


class OnPolicy:
    """
    The on-policy part of a distillation run: which optimizer steps train on generated
    tokens, the generation, the batches built from it, and what is logged about it.

    Args:
        config (OnPolicyConfig): the checked ``on_policy`` block.
        seed (int): the run's seed.
        rank (int): this process's rank (its sampler is its own).
        stop_tokens (Sequence[int]): end-of-turn tokens (the tokenizer's ``stop_tokens``).
        pad_id (int): padding token of the generated batches.
        max_seq_len (int): prompt and generated tokens together stay within it.
        ignore_index (int): label of untrained positions.
        device (torch.device): where the models are.
        dtypes (Tuple[torch.dtype, torch.dtype]): the student's and the teacher's (their KV caches').
        samples_path (Optional[Path]): where ``log_samples`` writes (None: nowhere).
    """

    def __init__(self, config: OnPolicyConfig, *, seed: int, rank: int, stop_tokens: Sequence[int], pad_id: int,
                 max_seq_len: int, ignore_index: int, device: torch.device,
                 dtypes: Tuple[torch.dtype, torch.dtype] = (torch.float32, torch.float32),
                 samples_path: Optional[Path] = None):
        self.config = config
        self.coin = torch.Generator().manual_seed(seed + _COIN_SEED)
        self.sampler = torch.Generator().manual_seed(seed + _SAMPLER_SEED + rank)
        self._stop_tokens, self._pad_id = list(stop_tokens), pad_id
        self._max_seq_len, self._ignore_index, self._device, self._dtypes = max_seq_len, ignore_index, device, dtypes
        self._samples_path = samples_path if config.log_samples else None
        self.kind, self.step = "data", 0
        self._seconds, self._tokens, self._micro_batch, self._skipped = 0.0, 0, 0, 0

    # ------------------------------------------------------------------ per step

    def begin_step(self, step: int) -> str:
        """Decide optimizer step ``step`` (1-based): ``"student"`` (with probability lmbda),
        else ``"teacher"`` with ``seq_kd``, else ``"data"``. One coin draw per step when
        lmbda > 0, none otherwise."""
        self.step, self._seconds, self._tokens, self._micro_batch, self._skipped = step, 0.0, 0, 0, 0
        c = self.config
        if c.lmbda > 0 and torch.rand((), generator=self.coin, dtype=torch.float64).item() < c.lmbda:
            self.kind = "student"
        else:
            self.kind = "teacher" if c.seq_kd else "data"
        return self.kind

    @property
    def generating(self) -> bool:
        return self.kind != "data"

    def batch(self, batch: Dict[str, torch.Tensor], student: nn.Module, teacher: Optional[nn.Module], *,
              all_done: Optional[Callable[[bool], bool]] = None) -> Dict[str, torch.Tensor]:
        """``batch`` itself on a data step; otherwise its prompts with the student's (or the
        teacher's) samples, labelled at the samples. ``all_done`` is as for
        :func:`~jsd_loss.generation.generate` (FSDP: every rank takes the same steps)."""
        self._micro_batch += 1
        if not self.generating:
            return batch
        model, dtype = (student, self._dtypes[0]) if self.kind == "student" else (teacher, self._dtypes[1])
        if model is None:
            raise RuntimeError("on_policy.seq_kd needs the live teacher, which this run did not load")
        start = time.perf_counter()
        prompts, row_ids = batch_prompts(batch, self._ignore_index)
        c = self.config
        fits = [prompt_fits(len(p), self._max_seq_len) for p in prompts]
        if not all(fits) and c.long_prompts == "error":  # the setup check makes this unreachable
            raise ValueError(f"on_policy: a prompt of row {row_ids[fits.index(False)]} leaves no room to generate "
                             f"within max_seq_len={self._max_seq_len}")
        # a row that does not fit still takes part (a one-token prompt, one token, dropped), so
        # every rank's batch generates (FSDP's forwards are collectives); it stays without label
        prompts = [p if ok else p[:1] for p, ok in zip(prompts, fits)]
        budgets = [min(c.max_new_tokens, self._max_seq_len - len(p)) if ok else 1 for p, ok in zip(prompts, fits)]
        out = generate(model, prompts, max_new_tokens=c.max_new_tokens, budgets=budgets,
                       stop_tokens=self._stop_tokens, generator=self.sampler, dtype=dtype, device=self._device,
                       temperature=c.temperature, top_k=c.top_k, pad_id=self._pad_id, all_done=all_done)
        out = [g if ok else [] for g, ok in zip(out, fits)]
        self._seconds += time.perf_counter() - start
        self._tokens += sum(map(len, out))
        self._skipped += fits.count(False)
        if self._samples_path is not None:
            with open(self._samples_path, "a") as f:
                for rid, p, g in zip(row_ids, prompts, out):
                    if g:
                        f.write(json.dumps({"step": self.step, "micro_batch": self._micro_batch - 1,
                                            "by": self.kind, "row_id": rid, "prompt": p, "generated": g}) + "\n")
        return generated_batch(prompts, out, row_ids, pad_id=self._pad_id, ignore_index=self._ignore_index,
                               device=self._device)

    def class_loss(self, class_loss: torch.Tensor) -> torch.Tensor:
        """The CE term as the objective takes it: zero on generated tokens unless ``ce_on_generated``."""
        if self.generating and not self.config.ce_on_generated:
            return torch.zeros_like(class_loss)
        return class_loss

    def metrics(self) -> Dict[str, float]:
        """This step's record: ``on_policy`` (1: the student's samples), ``seq_kd`` (1: the
        teacher's; only with seq_kd), and this process's ``generated_tokens``,
        ``generation_seconds``, ``generation_tokens_per_second`` and (with ``long_prompts:
        skip``) ``skipped_prompts``, rows left out for want of room."""
        record = {"on_policy": float(self.kind == "student"), "generated_tokens": float(self._tokens),
                  "generation_seconds": self._seconds,
                  "generation_tokens_per_second": self._tokens / self._seconds if self._seconds else 0.0}
        if self.config.seq_kd:
            record["seq_kd"] = float(self.kind == "teacher")
        if self.config.long_prompts == "skip":
            record["skipped_prompts"] = float(self._skipped)
        return record

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Both generators' states (uint8 tensors: loadable with ``weights_only=True``)."""
        return {"coin": self.coin.get_state(), "sampler": self.sampler.get_state()}

    def load_state_dict(self, states: Optional[List[Dict[str, torch.Tensor]]], rank: int) -> bool:
        """Continue from the states of a step checkpoint (one per rank); False, leaving the
        seeded generators, when the checkpoint holds none (trained without on_policy)."""
        if not states:
            return False
        self.coin.set_state(states[rank]["coin"])
        self.sampler.set_state(states[rank]["sampler"])
        return True

    def truncate_samples_after(self, step: int) -> None:
        """Drop logged samples past ``step`` (a resumed run generates them again)."""
        path = self._samples_path
        if path is None or not path.exists():
            return
        lines = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
        path.write_text("".join(l + "\n" for l in lines))


def setup_on_policy(config: Optional[OnPolicyConfig], cfg: Any, dataset: Any, tokenizer: Any, *, seed: int,
                    rank: int, world_size: int, ignore_index: int, device: torch.device,
                    dtypes: Tuple[torch.dtype, torch.dtype] = (torch.float32, torch.float32),
                    samples_path: Optional[Path] = None, log=None) -> Optional[OnPolicy]:
    """The run's :class:`OnPolicy` (None without an ``on_policy`` block), once every prompt the
    run draws is known to leave room to generate (when any step can generate).

    Raises:
        ValueError: naming the rows whose prompts do not fit (see :func:`check_prompts`).
    """
    if config is None:
        return None
    max_seq_len = cfg.tokenizer.get("max_seq_len", None)
    if config.active and config.long_prompts == "error":
        rows = run_rows(cfg, dataset, world_size)
        check_prompts(dataset, rows, max_seq_len=max_seq_len, ignore_index=ignore_index)
        if log is not None:
            log.info(f"on_policy: lmbda={config.lmbda}, seq_kd={config.seq_kd}, up to {config.max_new_tokens} new "
                     f"tokens per row; the {len(rows)} prompts this run draws fit max_seq_len={max_seq_len}")
    return OnPolicy(config, seed=seed, rank=rank, stop_tokens=tokenizer.stop_tokens, pad_id=tokenizer.pad_id,
                    max_seq_len=max_seq_len, ignore_index=ignore_index, device=device, dtypes=dtypes,
                    samples_path=samples_path)
