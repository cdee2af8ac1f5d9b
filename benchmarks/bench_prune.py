"""Student initialisation by pruning: every method at ~90M (and a smaller size), side by side.

For each method and size: parameter count, held-out Dolly NLL per response token before
any training (the eval split, never used for calibration), and forward tokens/s of the
student (depth-pruned students are faster per token). Then, for the methods named by
``--heal``, the same quick JSD distillation (``configs/smollm2/135M_to_90M_jsd_quick.yaml``,
equal steps and data) from each initialisation, and the held-out NLL after it, per seed.

The teacher's calibration statistics are collected once and shared by every method; only
the later stages of iterative or depth+width methods re-calibrate on their own model.

    python benchmarks/bench_prune.py --json-out results/bench_prune.json   # needs models/
    python benchmarks/bench_prune.py --eval-rows 60 --heal ""             # scores only
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import REPO, add_json_args, emit_json

# (name, PruningPlan fields); the size target comes from --sizes. "width-refit" is the
# default of ``python -m jsd_loss.prepare student``.
DEFAULT_METHOD = "width-refit"
METHODS = {
    "width": dict(method="width"),
    "width-refit": dict(method="width", refit_mlp=True),
    "width-iter2": dict(method="width", iterations=2),
    "width-heads6": dict(method="width", num_heads=6),
    "width-hidden512": dict(method="width", hidden_size=504),
    "width-mean": dict(method="width", aggregation="mean"),
    "depth-angular+width-24": dict(method="depth-angular+width", num_layers=24),
    "depth-bi": dict(method="depth-bi"),
    "depth-angular": dict(method="depth-angular"),
    "even": dict(method="even"),
}


def _eval_samples(tokenizer, rows: int):
    from jsd_loss.datasets import dolly_dataset

    ds = dolly_dataset(tokenizer, split="eval")
    n = min(rows or len(ds), len(ds))
    return [(ds[i]["tokens"], ds[i]["labels"]) for i in range(n)]


def _nll(model, samples) -> float:
    from jsd_loss.metrics import response_nll

    total, count = response_nll(model, samples)
    return total / count


@torch.no_grad()
def _forward_tokens_per_second(model, batch=4, seq=256, repeats=3) -> float:
    x = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return batch * seq / statistics.median(times)


def _save_stats(stats, path: Path) -> None:
    from dataclasses import fields

    from safetensors.torch import save_file

    tensors = {f.name: getattr(stats, f.name) for f in fields(stats) if isinstance(getattr(stats, f.name), torch.Tensor)}
    counts = {"num_samples": str(stats.num_samples), "num_tokens": str(stats.num_tokens)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=counts)


def _load_stats(path: Path):
    from safetensors import safe_open

    from jsd_loss.pruning import ActivationStats

    with safe_open(str(path), "pt") as f:
        counts = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return ActivationStats(**tensors, num_samples=int(counts["num_samples"]), num_tokens=int(counts["num_tokens"]))


def _heal(student_dir: Path, teacher_dir: Path, out: Path, seed: int, steps: int) -> None:
    """Quick JSD distillation of ``student_dir`` from ``teacher_dir`` (read the output dir)."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "torchtune._cli.tune", "run", "jsd_loss/recipes/jsd_distill_single_device.py",
           "--config", "configs/smollm2/135M_to_90M_jsd_quick.yaml", f"student_dir={student_dir}",
           f"teacher_dir={teacher_dir}",
           f"output_dir={out}", f"seed={seed}", f"max_steps_per_epoch={steps}", "save_every_n_steps=null",
           "overwrite_output=True", "model._component_=jsd_loss.models.smollm2.smollm2_from_hf_config",
           f"model.path={student_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"heal of {student_dir} failed:\n{proc.stderr[-4000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-dir", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sizes", default="88493760,60M", help="parameter targets; the first is the ~90M student")
    p.add_argument("--small-methods", default="width-refit,width,depth-bi,even", help="methods run at the other sizes")
    p.add_argument("--calibration-rows", type=int, default=512)
    p.add_argument("--eval-rows", type=int, default=0, help="held-out rows scored (0: all 229)")
    p.add_argument("--heal", default="width-refit,width,even", help="methods healed with the quick JSD config")
    p.add_argument("--heal-steps", type=int, default=60)
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--work-dir", default=None, help="keep students and heal runs here (default: a temp dir)")
    add_json_args(p)
    args = p.parse_args()
    from jsd_loss.checkpointing import load_state_dict, read_config, write_model_dir
    from jsd_loss.models.smollm2 import SmolLM2Tokenizer, smollm2_from_hf, smollm2_from_hf_state
    from jsd_loss.prepare._student import calibration_samples
    from jsd_loss.pruning import PruningPlan, collect_activation_stats, count_parameters, parse_size, prune

    teacher_dir = Path(args.teacher_dir)
    if not (teacher_dir / "config.json").is_file():
        sys.exit(f"error: {teacher_dir} is not a prepared model directory (README: python -m jsd_loss.prepare teacher)")
    config, teacher_state = read_config(teacher_dir), load_state_dict(teacher_dir)
    tokenizer = SmolLM2Tokenizer(str(teacher_dir / "tokenizer.json"))
    eval_samples = _eval_samples(tokenizer, args.eval_rows)
    probe = PruningPlan(calibration_rows=args.calibration_rows)
    samples = calibration_samples(teacher_dir / "tokenizer.json", int(config["vocab_size"]),
                                  str(REPO.parent / "shared/data/databricks-dolly-15k/databricks-dolly-15k.jsonl"), probe)
    cache = {}

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_prune-"))
    work.mkdir(parents=True, exist_ok=True)
    # the teacher's statistics (with the MLP Gram matrices) take the longest: kept on disk, so an
    # interrupted benchmark resumes without them (same rows and teacher, or they are recomputed)
    stats_file = work / f"teacher_stats_rows{args.calibration_rows}.safetensors"

    def stats_fn(cfg, state, with_gram):
        is_teacher = cfg == config and state["model.layers.0.mlp.down_proj.weight"] is teacher_state[
            "model.layers.0.mlp.down_proj.weight"]
        if is_teacher and "teacher" not in cache and stats_file.is_file():
            cache["teacher"] = _load_stats(stats_file)
        if is_teacher and "teacher" in cache:
            return cache["teacher"]
        model = smollm2_from_hf_state(cfg, state, max_seq_len=probe.calibration_max_seq_len)
        stats = collect_activation_stats(model, samples, pad_id=0, with_gram=with_gram or is_teacher)
        if is_teacher:
            cache["teacher"] = stats
            _save_stats(stats, stats_file)
        return stats

    teacher = smollm2_from_hf(str(teacher_dir))
    report = {"teacher_heldout_nll": _nll(teacher, eval_samples), "eval_rows": len(eval_samples),
              "calibration_rows": args.calibration_rows, "teacher_parameters": count_parameters(config),
              "teacher_forward_tokens_per_second": _forward_tokens_per_second(teacher), "students": {}}
    del teacher
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    for size_index, size in enumerate(sizes):
        names = args.methods.split(",") if size_index == 0 else args.small_methods.split(",")
        for name in names:
            plan = PruningPlan(target_params=size, calibration_rows=args.calibration_rows, **METHODS[name])
            t = time.perf_counter()
            cfg, state, record, _ = prune(config, teacher_state, plan, stats_fn)
            seconds = time.perf_counter() - t
            model = smollm2_from_hf_state(cfg, state)
            key = f"{name}@{size / 1e6:.1f}M"
            row = {"method": name, "plan": plan.as_dict(), "parameters": count_parameters(cfg),
                   "shape": {k: cfg[k] for k in ("num_hidden_layers", "intermediate_size", "num_attention_heads",
                                                 "hidden_size")},
                   "heldout_nll": _nll(model, eval_samples), "prune_seconds": seconds,
                   "forward_tokens_per_second": _forward_tokens_per_second(model)}
            report["students"][key] = row
            print(json.dumps({key: row}), file=sys.stderr, flush=True)
            if size_index == 0 and name in args.heal.split(","):
                student_dir = work / key
                student_dir.mkdir(parents=True, exist_ok=True)
                write_model_dir(student_dir, state, cfg, copy_from=teacher_dir)
                row["healed_heldout_nll"] = {}
                for seed in [int(s) for s in args.seeds.split(",")]:
                    out = work / f"{key}-heal-seed{seed}"
                    _heal(student_dir, teacher_dir, out, seed, args.heal_steps)
                    row["healed_heldout_nll"][seed] = _nll(smollm2_from_hf(str(out / "final")), eval_samples)
                    print(json.dumps({key: row["healed_heldout_nll"]}), file=sys.stderr, flush=True)
    default_key = f"{DEFAULT_METHOD}@{sizes[0] / 1e6:.1f}M"
    if default_key in report["students"]:
        report["default_student_heldout_nll"] = report["students"][default_key]["heldout_nll"]
    if emit_json(report, args):
        return
    print(f"teacher: NLL {report['teacher_heldout_nll']:.3f}, {report['teacher_forward_tokens_per_second']:.0f} tok/s")
    print("| student | params | layers | MLP | heads | hidden | held-out NLL | healed NLL (per seed) | forward tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in report["students"].items():
        s = r["shape"]
        healed = ", ".join(f"{v:.3f}" for v in r.get("healed_heldout_nll", {}).values()) or "–"
        print(f"| {key} | {r['parameters']:,} | {s['num_hidden_layers']} | {s['intermediate_size']} | "
              f"{s['num_attention_heads']} | {s['hidden_size']} | {r['heldout_nll']:.3f} | {healed} | "
              f"{r['forward_tokens_per_second']:.0f} |")


if __name__ == "__main__":
    main()
