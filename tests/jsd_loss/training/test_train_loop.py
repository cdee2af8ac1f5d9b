"""The optimizer-step loop on its own (no recipe): an accumulated step against the same step
computed by hand in float64 on the concatenated batch, the collectives' hooks, skipped
non-finite steps, and where a resumed multi-epoch run logs and saves."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from jsd_loss import JSDistillLoss
from jsd_loss.training import (
    BatchLoss, KDLosses, KDSchedules, LoopSettings, NonFiniteSteps, Precision, Progress, RankHooks, TrainLoop,
)
from tests.reference import jsd64

IGNORE, VOCAB, KD_RATIO, LR = -100, 11, 0.3, 0.5


class TinyLM(nn.Module):
    """Logits that depend on the whole prefix, with the models' call signature."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.mix, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, 8), nn.Linear(8, VOCAB)

    def forward(self, tokens, mask=None, input_pos=None):
        return self.out(torch.tanh(self.mix(self.emb(tokens).cumsum(1))))


class Loader:
    """Each epoch's batches (a resumed epoch's dataloader yields only the rest of it)."""

    def __init__(self, per_epoch):
        self.per_epoch, self.epoch, self.epochs = per_epoch, None, []
        self.sampler = SimpleNamespace(set_epoch=self._set_epoch)

    def _set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.per_epoch[self.epoch])


class Records:
    def __init__(self):
        self.records = []

    def log_dict(self, record, step):
        self.records.append({"step": step, **{k: float(v) for k, v in record.items()}})


def _batch(seed, labelled):
    """Two rows of 6 tokens; ``labelled[i]``: how many of row i's last positions are labels."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=g)
    labels = tokens.clone()
    for row, n in enumerate(labelled):
        labels[row, : 6 - n] = IGNORE
    return {"tokens": tokens, "labels": labels}


# label counts 7, 2 and 0 (a micro-batch with nothing to train): per-batch means differ from the token mean
MICRO_BATCHES = [_batch(1, (5, 3)), _batch(2, (1, 2)), _batch(3, (0, 0))]


def _loop(student, batches_per_epoch, *, progress, settings, ranks=RankHooks(), loss_cls=BatchLoss):
    teacher = TinyLM(seed=1).eval()
    loss = loss_cls(student, teacher, None, KDLosses(nn.CrossEntropyLoss(ignore_index=IGNORE),
                                                     JSDistillLoss(beta=0.5, ignore_index=IGNORE), 0),
                    Precision(torch.float32, torch.float32), torch.device("cpu"))
    optimizer = torch.optim.SGD(student.parameters(), lr=LR)
    saves, logger = [], Records()
    loop = TrainLoop(
        loss, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), Loader(batches_per_epoch),
        schedules=KDSchedules(OmegaConf.create({"kd_ratio": KD_RATIO})), nonfinite=NonFiniteSteps(3),
        metric_logger=logger, progress=progress, settings=settings, ranks=ranks,
        save_checkpoint=lambda name, state: saves.append((name, state, progress.global_step, progress.epochs_run)),
    )
    loop.run()
    return loop, logger.records, saves


def _by_hand(student, batches, token_weighted=True):
    """One SGD step in float64 on the concatenated batch: the CE and JSD means over all its
    labels (``token_weighted``), or the mean of the micro-batches' means (the stock recipe's
    weighting, which the loop must not have)."""
    model, teacher = copy.deepcopy(student).double(), TinyLM(seed=1).double()
    objectives = []
    for b in batches if not token_weighted else [{k: torch.cat([b[k] for b in batches]) for k in batches[0]}]:
        shifted = torch.cat([b["labels"][:, 1:], torch.full((len(b["labels"]), 1), IGNORE)], dim=1)
        trained = shifted != IGNORE
        if not trained.any():
            continue
        logits, teacher_logits = model(b["tokens"])[trained], teacher(b["tokens"]).detach()[trained]
        ce, kd = F.cross_entropy(logits, shifted[trained]), jsd64(logits, teacher_logits, beta=0.5).mean()
        objectives.append(((1 - KD_RATIO) * ce + KD_RATIO * kd, ce, kd))
    objective = sum(o[0] for o in objectives) / len(objectives)
    objective.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return model, objectives[0]


TWO_IDENTICAL_RANKS = RankHooks(grad_scale=2.0, reduce_step_stats=lambda n, c, k: (2 * n, 2 * c, 2 * k))


@pytest.mark.parametrize("ranks", [RankHooks(), TWO_IDENTICAL_RANKS], ids=["one_process", "two_identical_ranks"])
def test_an_accumulated_step_is_one_step_on_the_concatenated_batch(ranks):
    """Two identical ranks: FSDP2 averages their gradients (so each is this process's sum), the
    hooks double the step's token count and losses: the same step as one process."""
    student = TinyLM(seed=0)
    start = copy.deepcopy(student)
    _, records, _ = _loop(student, {0: MICRO_BATCHES}, progress=Progress(1, steps_per_epoch=1),
                          settings=LoopSettings(gradient_accumulation_steps=3), ranks=ranks)
    expected, (objective, ce, kd) = _by_hand(start, MICRO_BATCHES)
    for (name, got), want in zip(student.named_parameters(), expected.parameters()):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6, msg=name)
    (record,) = records
    assert record["step"] == 1 and record["skipped_steps"] == 0 and record["epoch"] == 0
    assert record["class_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert record["kd_loss"] == pytest.approx(kd.item(), rel=1e-5)
    assert record["loss"] == pytest.approx(objective.item(), rel=1e-5)
    # the test tells the weightings apart: per-batch means would have given another step
    stock, _ = _by_hand(start, MICRO_BATCHES, token_weighted=False)
    assert not torch.allclose(stock.out.weight.float(), student.out.weight, rtol=1e-3, atol=1e-4)


class NaNOnFirstCall(BatchLoss):
    calls = 0

    def __call__(self, batch):
        class_loss, kd_loss, features = super().__call__(batch)
        self.calls += 1
        return class_loss * float("nan") if self.calls == 1 else class_loss, kd_loss, features


def test_a_non_finite_step_is_skipped_and_the_next_one_applied():
    student = TinyLM(seed=0)
    start = copy.deepcopy(student)
    loop, records, _ = _loop(student, {0: MICRO_BATCHES[:2]}, progress=Progress(1, steps_per_epoch=2),
                             settings=LoopSettings(gradient_accumulation_steps=1), loss_cls=NaNOnFirstCall)
    assert [r["skipped_steps"] for r in records] == [1, 1]
    assert records[0]["loss"] != records[0]["loss"] and records[1]["loss"] == records[1]["loss"]  # NaN, then finite
    assert loop.lr_scheduler.last_epoch == 2  # the skipped step used its schedule slot
    # the skipped step left the weights as they were: the second step is the first from the start
    expected, _ = _by_hand(start, MICRO_BATCHES[1:2])
    for got, want in zip(student.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


def test_a_resumed_run_logs_and_saves_at_the_hand_computed_steps():
    """Resumed after step 1 of 3 in epoch 0 of 2; the loader yields more batches than an epoch
    has steps (the loop stops each epoch at its last step). Records every 2nd step, step_N
    every 2nd step with the run's progress at that moment, then final."""
    batches = [_batch(10 + i, (3, 2)) for i in range(5)]
    progress = Progress(2, steps_per_epoch=3, epochs_run=0, global_step=1)
    loop, records, saves = _loop(TinyLM(seed=0), {0: batches[:4], 1: batches}, progress=progress,
                                 settings=LoopSettings(1, log_every_n_steps=2, save_every_n_steps=2))
    assert loop.dataloader.epochs == [0, 1]
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 0), (4, 1), (6, 1)]
    assert saves == [("step_2", True, 2, 0), ("step_4", True, 4, 1), ("step_6", True, 6, 2), ("final", False, 6, 2)]
    assert (progress.global_step, progress.epochs_run) == (6, 2)
