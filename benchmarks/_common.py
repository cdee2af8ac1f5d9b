"""What the benchmark scripts share: the JSON output options, the real-model and run-shape
arguments, running the distillation recipe on a config, and counting a run's tokens per step."""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]


def add_json_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", help="also write the JSON object to this file")


def add_model_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-dir", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--student-dir", default=str(REPO / "models" / "smollm2-90m-student"))


def add_run_args(p: argparse.ArgumentParser, steps: int) -> None:
    """Steps, batch size and sequence length of the runs, and the model directories."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=256)
    add_model_dir_args(p)


def run_distillation(config: Path, name: str) -> None:
    """``tune run`` of the single-device distillation recipe on ``config``; its stderr tail on failure."""
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "run",
                           "jsd_loss/recipes/jsd_distill_single_device.py", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")


def tokens_per_step(config: Path, steps: int) -> List[Tuple[int, int]]:
    """Per step of a run of ``config``: its label tokens (the recipe's count) and real
    (non-padding: prompt and response) tokens, from the run's own data loader (the batches it
    draws, in order, for its seed and shuffle)."""
    from omegaconf import OmegaConf
    from torchtune import config as tune_config

    from jsd_loss.training import build_dataloader

    cfg = OmegaConf.load(config)
    loader = build_dataloader(cfg.dataset, tune_config.instantiate(cfg.tokenizer), batch_size=cfg.batch_size,
                              shuffle=cfg.shuffle, seed=cfg.seed, ignore_index=-100)
    per_step, batches = [], iter(loader)
    for _ in range(steps):
        group = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
        per_step.append((sum(int((b["labels"][..., 1:] != -100).sum()) for b in group),
                         sum(int((b["row_ids"] != -1).sum()) for b in group)))
    return per_step


def check_model_dirs(args: argparse.Namespace) -> None:
    """Stop before any run when a model directory has not been prepared."""
    for d in (args.teacher_dir, args.student_dir):
        if not (Path(d) / "config.json").is_file():
            sys.exit(f"error: {d} is not a prepared model directory (see README: python -m jsd_loss.prepare)")


def emit_json(report: dict, args: argparse.Namespace) -> bool:
    """Write ``report`` to ``--json-out`` and print it under ``--json``; True when printed
    (the caller then skips its table)."""
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    return args.json
