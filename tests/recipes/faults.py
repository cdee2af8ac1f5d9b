"""Fault injection for the recipe tests: config components that fail on one rank only, give
NaN losses or empty micro-batches, or SIGKILL the run; a checkpoint write killed or failing
(disk full) part-way."""

import os

from torch.utils.data import Dataset
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX
from torchtune.modules.loss import CEWithChunkedOutputLoss

from jsd_loss.datasets import dolly_dataset
from jsd_loss.training import JSONLMetricLogger
from jsd_loss.models.smollm2 import smollm2_tokenizer


def tokenizer_failing_on_rank(rank: int, **kwargs):
    """``smollm2_tokenizer`` everywhere but on ``rank``, which raises (as a rank that runs out
    of memory or reads a corrupt file at start would)."""
    if int(os.environ.get("RANK", "0")) == rank:
        raise RuntimeError(f"injected failure on rank {rank}")
    return smollm2_tokenizer(**kwargs)


class CENaNOnCalls(CEWithChunkedOutputLoss):
    """torchtune's chunked CE, NaN on the given calls (1-based; one call per micro-batch): a
    step whose loss and gradients are NaN, as an overflow or a bad row would make them."""

    def __init__(self, nan_calls, **kwargs):
        super().__init__(**kwargs)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, logits, labels):
        self.calls += 1
        loss = super().forward(logits, labels)
        return loss * float("nan") if self.calls in self.nan_calls else loss


class _WithEmptyPairs(Dataset):
    """Rows ``2k, 2k+1`` of ``ds`` at indices ``4k, 4k+1``; at ``4k+2, 4k+3`` the same rows
    with every label ignored (a micro-batch of 2 with no trained token)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return 2 * (len(self.ds) // 2) * 2

    def __getitem__(self, index):
        row = dict(self.ds[(index // 4) * 2 + index % 2])
        if index % 4 >= 2:
            row["labels"] = [CROSS_ENTROPY_IGNORE_IDX] * len(row["labels"])
        return row


def dolly_with_empty_batches(tokenizer, **kwargs):
    """``dolly_dataset`` in which every second pair of rows has no trained label (with
    ``shuffle: False`` and ``batch_size: 2``, every second micro-batch is empty)."""
    return _WithEmptyPairs(dolly_dataset(tokenizer, **kwargs))


class KilledAtStep(JSONLMetricLogger):
    """The recipe's metric logger, which SIGKILLs its process when asked to log step
    ``kill_at_step`` (after that step's optimizer step, before its checkpoint): a run killed
    mid-training, at a known step. Only rank 0 logs; under torchrun the other ranks are then
    stopped by the launcher."""

    def __init__(self, kill_at_step: int, **kwargs):
        super().__init__(**kwargs)
        self.kill_at_step = kill_at_step

    def log_dict(self, payload, step: int) -> None:
        if step == self.kill_at_step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        super().log_dict(payload, step)


def failing_save(n: int, how: str) -> None:
    """``tune run`` (arguments from ``sys.argv``) in this process, its ``n``-th checkpoint write
    failing with the weights file half written: ``kill`` SIGKILLs the process there, nothing
    renamed yet; ``disk-full`` raises ENOSPC there, as a write to a full disk does."""
    import errno
    import signal
    import sys

    from torchtune._cli.tune import main

    import jsd_loss.training._checkpoint as checkpoint

    original, calls = checkpoint.write_model_dir, []

    def write_model_dir(target, *args, **kwargs):
        original(target, *args, **kwargs)
        calls.append(target)
        if len(calls) == n:
            weights = target / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(weights))

    checkpoint.write_model_dir = write_model_dir
    sys.argv = ["tune", *sys.argv[1:]]
    main()


if __name__ == "__main__":  # python -m tests.recipes.faults {kill,disk-full}-during-save N run RECIPE --config ...
    import sys

    how = {"kill-during-save": "kill", "disk-full-during-save": "disk-full"}[sys.argv[1]]
    n = int(sys.argv[2])
    del sys.argv[1:3]
    failing_save(n, how)
