"""Throughput, FLOP utilisation and (``--learning``) held-out NLL of the distillation recipe at
each precision, side by side in one run.

Same teacher (SmolLM2-135M-Instruct), student (the pruned 90M), data (Dolly train, in order),
batch, sequence length, steps and loss (JSD with CE, the quick config) for every variant:

* ``fp32_baseline``: the quick config before this benchmark's speed settings: fp32, AdamW's
  per-parameter loop, logits in 8 chunks, glibc's default malloc (``keep_freed_cpu_memory:
  False``);
* ``fp32``: fp32 weights, gradients and AdamW state, no autocast; the quick config's fused
  AdamW, one logit chunk and freed memory kept for reuse, as every variant below;
* ``bf16``: pure bf16 (``dtype: bf16``): bf16 weights, gradients and AdamW state, bf16 teacher;
* ``bf16_sr_adamw``: pure bf16 with torchao's ``_AdamW(bf16_stochastic_round=True)``;
* ``mixed``: ``mixed_precision: bf16``: bf16 autocast over the forwards and losses, fp32
  master weights and AdamW state, fp32 teacher weights;
* ``mixed_bf16_teacher``: as ``mixed`` with ``teacher_dtype: bf16``;
* ``mixed_bf16_teacher_fused``: as ``mixed_bf16_teacher`` with the fused-linear JSD loss (CE from
  the same pass), whose logit matmuls run in bf16 and whose softmax math stays fp32.

Each variant is its own ``tune run``. tokens/s is the median, over the steps after the first,
of the label tokens per second the recipe logs (the first step of the torchao variant holds
its torch.compile). FLOP utilisation: useful FLOP/s = (6 x student params + 2 x teacher
params) x real tokens/s (prompt and response tokens, padding excluded: each step's
``row_ids != -1``, counted here by running the same data loader), over the bf16 and the fp32
matmul peak this script measures in the same run, with the runs' thread count (best time of
matmuls of the models' shapes: 512x576x1536, the student's MLP; 512x576x49152, its output
projection). Attention's own FLOPs are not counted, so the utilisation is a slight underestimate.

    python benchmarks/bench_precision.py --steps 12 --json --teacher-dir ... --student-dir ...
    python benchmarks/bench_precision.py --steps 60 --learning --json-out bench_precision.json
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import REPO, add_json_args, add_run_args, check_model_dirs, emit_json, run_distillation, tokens_per_step
from bench_recipe import BASE, heldout_nll

VARIANTS = ["fp32_baseline", "fp32", "bf16", "bf16_sr_adamw", "mixed", "mixed_bf16_teacher", "mixed_bf16_teacher_fused"]
MATMULS = [(512, 576, 1536), (512, 576, 49152)]


def _config(variant: str, args, out: Path) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(BASE)
    cfg.output_dir = str(out)
    cfg.teacher_dir, cfg.student_dir = args.teacher_dir, args.student_dir
    cfg.dataset.source = str((REPO / cfg.dataset.source).resolve())
    cfg.max_steps_per_epoch = args.steps
    cfg.batch_size = args.batch_size
    cfg.tokenizer.max_seq_len = args.max_seq_len
    cfg.save_every_n_steps = None
    cfg.shuffle = False
    # every variant states its precision (the quick config's own default is mixed_bf16_teacher)
    cfg.mixed_precision = cfg.teacher_dtype = None
    cfg.keep_freed_cpu_memory = True
    if variant == "fp32_baseline":
        cfg.optimizer.fused = False
        cfg.loss.num_output_chunks = cfg.kd_loss.num_output_chunks = 8
        cfg.keep_freed_cpu_memory = False
    if variant.startswith("bf16"):
        cfg.dtype = "bf16"
    if variant == "bf16_sr_adamw":
        adamw = {k: v for k, v in cfg.optimizer.items() if k != "fused"}
        cfg.optimizer = {**adamw, "_component_": "torchao.optim._AdamW", "bf16_stochastic_round": True}
    if variant.startswith("mixed"):
        cfg.mixed_precision = "bf16"
    if variant.startswith("mixed_bf16_teacher"):
        cfg.teacher_dtype = "bf16"
    if variant.endswith("_fused"):
        cfg.kd_loss = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "return_ce": True}
    path = out.parent / f"{variant}.yaml"
    OmegaConf.save(cfg, path)
    return path


def matmul_peaks(repeats: int = 5) -> dict:
    """FLOP/s of the fastest of ``repeats`` timed runs of each shape in ``MATMULS``, per dtype."""
    import torch

    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        shapes = {}
        for m, k, n in MATMULS:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b  # warm-up
            best = min(_timed(lambda: a @ b) for _ in range(repeats))
            shapes[f"{m}x{k}x{n}"] = 2 * m * k * n / best
        peaks[name] = {"flops_per_second": max(shapes.values()), "by_shape": shapes}
    return peaks


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_params(config: Path) -> dict:
    """Parameters of the student and the teacher as their configs build them (tied weights once)."""
    import torch
    from omegaconf import OmegaConf

    from jsd_loss.training import build_model

    cfg = OmegaConf.load(config)
    return {who: sum(p.numel() for p in build_model(cfg[key], torch.device("meta"), torch.float32).parameters())
            for who, key in (("student", "model"), ("teacher", "teacher_model"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, steps=12)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--learning", action="store_true", help="score each final student's held-out Dolly NLL")
    p.add_argument("--heldout-rows", type=int, default=60, help="eval rows scored with --learning")
    add_json_args(p)
    args = p.parse_args()
    check_model_dirs(args)

    from jsd_loss.training import read_metrics

    peaks = matmul_peaks()
    rows, params, ratios = {}, None, None
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            out = Path(tmp) / variant
            config = _config(variant, args, out)
            if params is None:
                params = model_params(config)
                ratios = [real / label for label, real in tokens_per_step(config, args.steps)]
            run_distillation(config, variant)
            records = read_metrics(out / "logs")
            label_tps = [r["tokens_per_second"] for r in records]
            real_tps = [t * ratio for t, ratio in zip(label_tps, ratios)]
            useful = (6 * params["student"] + 2 * params["teacher"]) * statistics.median(real_tps[1:] or real_tps)
            rows[variant] = {
                "tokens_per_second": statistics.median(label_tps[1:] or label_tps),
                "real_tokens_per_second": statistics.median(real_tps[1:] or real_tps),
                "useful_flops_per_second": useful,
                "flop_utilisation_vs_bf16_peak": useful / peaks["bf16"]["flops_per_second"],
                "flop_utilisation_vs_fp32_peak": useful / peaks["fp32"]["flops_per_second"],
                "steps": len(records), "final_loss": records[-1]["loss"],
                "training_peak_rss_gib": max(r["peak_memory_gib"] for r in records),
            }
            if args.learning:
                rows[variant]["heldout_nll"] = heldout_nll(out / "final", args.heldout_rows, args.max_seq_len)
    report = {"config": {k: getattr(args, k) for k in ("steps", "batch_size", "max_seq_len")},
              "params": params, "matmul_peaks": peaks, "variants": rows}
    if "fp32" in rows:
        base = rows["fp32"]["tokens_per_second"]
        report["vs_fp32_tokens_per_second"] = {v: r["tokens_per_second"] / base for v, r in rows.items()}
        mixed = [v for v in rows if v.startswith("mixed")]
        if mixed:
            best = max(mixed, key=lambda v: rows[v]["tokens_per_second"])
            report["best_mixed_variant"] = best
            report["mixed_vs_fp32_tokens_per_second"] = rows[best]["tokens_per_second"] / base
    if "fp32_baseline" in rows:
        base = rows["fp32_baseline"]["tokens_per_second"]
        report["vs_fp32_baseline_tokens_per_second"] = {v: r["tokens_per_second"] / base for v, r in rows.items()}
    if emit_json(report, args):
        return
    c = report["config"]
    print(f"steps={c['steps']} batch_size={c['batch_size']} max_seq_len={c['max_seq_len']} "
          f"(teacher {params['teacher'] / 1e6:.0f}M, student {params['student'] / 1e6:.0f}M params)")
    print(f"matmul peaks: bf16 {peaks['bf16']['flops_per_second'] / 1e9:.1f} GFLOP/s, "
          f"fp32 {peaks['fp32']['flops_per_second'] / 1e9:.1f} GFLOP/s")
    print("| variant | tokens/s | vs fp32 | vs fp32_baseline | FLOP util. (bf16 peak) | FLOP util. (fp32 peak) "
          "| held-out NLL |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        nll = f"{r['heldout_nll']:.4f}" if "heldout_nll" in r else "–"
        ratio = report.get("vs_fp32_tokens_per_second", {}).get(name)
        vs_base = report.get("vs_fp32_baseline_tokens_per_second", {}).get(name)
        print(f"| {name} | {r['tokens_per_second']:.1f} | {f'{ratio:.2f}' if ratio else '–'} | "
              f"{f'{vs_base:.2f}' if vs_base else '–'} | "
              f"{r['flop_utilisation_vs_bf16_peak']:.1%} | {r['flop_utilisation_vs_fp32_peak']:.1%} | {nll} |")
    if "mixed_vs_fp32_tokens_per_second" in report:
        print(f"mixed_vs_fp32_tokens_per_second = {report['mixed_vs_fp32_tokens_per_second']:.3f} "
              f"({report['best_mixed_variant']})")


if __name__ == "__main__":
    main()
