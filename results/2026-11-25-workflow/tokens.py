"""Response tokens each study run trained on, from its logged config and metrics: the dataset's
response tokens (labels that are not ignore_index) of the rows its data steps drew, in the
recipe's order (the seeded sampler, batch_size items per step; a packed item's rows are counted
by its labels), plus the tokens the student generated on its on-policy steps (metrics.jsonl).

    python results/2026-11-25-workflow/tokens.py outputs/study/*_seed4?/logs   # -> tokens.jsonl
"""

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchtune import config

IGNORE_INDEX = -100
_datasets = {}  # the runs of one dataset config share it (packing the train split takes minutes)


def _dataset(cfg):
    key = OmegaConf.to_yaml(cfg.dataset) + OmegaConf.to_yaml(cfg.tokenizer)
    if key not in _datasets:
        _datasets[key] = config.instantiate(cfg.dataset, config.instantiate(cfg.tokenizer))
    return _datasets[key]


def run_tokens(log_dir: Path) -> dict:
    cfg = OmegaConf.load(log_dir / "config.yaml")
    steps = [json.loads(line) for line in open(log_dir / "metrics.jsonl")]
    on_policy = {s["step"]: s.get("on_policy", 0.0) > 0 for s in steps}
    generated = sum(int(s.get("generated_tokens", 0)) for s in steps)
    dataset = _dataset(cfg)
    sampler = StatefulDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=cfg.shuffle, seed=cfg.seed)
    sampler.set_epoch(0)
    items = list(sampler)
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps
    data_tokens = 0
    for step in range(1, max(on_policy) + 1):
        if on_policy.get(step, False):
            continue
        for item in items[(step - 1) * per_step: step * per_step]:
            data_tokens += sum(1 for label in dataset[item]["labels"] if label != IGNORE_INDEX)
    return {"run": str(log_dir.parent), "steps": max(on_policy), "on_policy_steps": sum(on_policy.values()),
            "dataset_response_tokens": data_tokens, "generated_tokens": generated,
            "response_tokens": data_tokens + generated}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(run_tokens(Path(path))))
