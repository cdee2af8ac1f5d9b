"""The distributed recipe (FSDP2) against the single-device recipe on the real models, side by side.

Same teacher (SmolLM2-135M-Instruct), student (the pruned 90M), data, seed and global batch:

* ``single_chunked``: ``jsd_loss/recipes/jsd_distill_single_device.py``, batch ``N * batch_size``;
* ``fsdp_chunked``: ``jsd_loss/recipes/jsd_distill_distributed.py`` on ``N`` ranks, batch ``batch_size``
  each, chunked JSD;
* ``fsdp_fused``: the same with the fused-linear JSD (CE from the same pass).

Reported: the largest relative difference of the loss, CE, KD and grad norm from the
single-device run at step 1 and over all steps (FSDP2 must compute the same steps; later steps
add Adam's amplification of summation-order rounding), global tokens/s (median over the steps
after the first) and rank 0's training-phase peak memory (RSS on CPU, allocated bytes on CUDA).
On one CPU the ranks share the cores, so the tokens/s ratio says what sharding costs there, not
how it scales on several devices.

    python benchmarks/bench_distributed.py --steps 6             # needs models/ (README: prepare)
    python benchmarks/bench_distributed.py --device cuda --dtype bf16 --nproc 8
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, add_json_args, add_model_dir_args, check_model_dirs, emit_json

BASE = REPO / "configs" / "smollm2" / "135M_to_90M_jsd_quick.yaml"
VARIANTS = ["single_chunked", "fsdp_chunked", "fsdp_fused"]
COMPARED = ("loss", "class_loss", "kd_loss", "grad_norm")


def _config(variant: str, args, out: Path) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(BASE)
    cfg.output_dir = str(out)
    cfg.teacher_dir, cfg.student_dir = args.teacher_dir, args.student_dir
    cfg.device, cfg.dtype = args.device, args.dtype
    cfg.max_steps_per_epoch = args.steps
    cfg.batch_size = args.batch_size * (args.nproc if variant.startswith("single") else 1)
    cfg.tokenizer.max_seq_len = args.max_seq_len
    cfg.save_every_n_steps = None
    if variant.endswith("fused"):
        cfg.kd_loss = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "return_ce": True}
    path = out.parent / f"{variant}.yaml"
    OmegaConf.save(cfg, path)
    return path


def _run(variant: str, config: Path, nproc: int) -> None:
    launch = ["--nproc_per_node", str(nproc), "jsd_loss/recipes/jsd_distill_distributed.py"] \
        if variant.startswith("fsdp") else ["jsd_loss/recipes/jsd_distill_single_device.py"]
    env = dict(os.environ)
    if variant.startswith("fsdp"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "run", *launch, "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-4000:]}")


def _rel(x: float, ref: float) -> float:
    return abs(x - ref) / max(abs(ref), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1, help="per rank")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    add_model_dir_args(p)
    p.add_argument("--variants", default=",".join(VARIANTS))
    add_json_args(p)
    args = p.parse_args()
    check_model_dirs(args)
    variants = args.variants.split(",")
    if "single_chunked" not in variants:
        sys.exit("error: --variants needs single_chunked, the reference the others are compared with")

    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            out = Path(tmp) / variant
            _run(variant, _config(variant, args, out), args.nproc)
            records[variant] = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]

    ref = records["single_chunked"]
    rows = {}
    for variant, recs in records.items():
        if len(recs) != len(ref):
            raise RuntimeError(f"{variant} logged {len(recs)} steps, single_chunked {len(ref)}")
        tps = [r["tokens_per_second"] for r in recs]
        rows[variant] = {
            "tokens_per_second": statistics.median(tps[1:] or tps),
            "training_peak_memory_gib": max(r["peak_memory_gib"] for r in recs),
            "step1_rel_diff_vs_single": max(_rel(recs[0][k], ref[0][k]) for k in COMPARED),
            "max_rel_diff_vs_single": max(_rel(r[k], a[k]) for r, a in zip(recs, ref) for k in COMPARED),
        }
    for row in rows.values():
        row["tokens_per_second_vs_single"] = row["tokens_per_second"] / rows["single_chunked"]["tokens_per_second"]
        row["peak_memory_vs_single"] = row["training_peak_memory_gib"] / rows["single_chunked"]["training_peak_memory_gib"]
    report = {"config": {k: getattr(args, k) for k in ("steps", "nproc", "batch_size", "max_seq_len", "device", "dtype")},
              "variants": rows}
    if emit_json(report, args):
        return
    c = report["config"]
    print(f"steps={c['steps']} nproc={c['nproc']} batch_size/rank={c['batch_size']} max_seq_len={c['max_seq_len']} "
          f"device={c['device']} dtype={c['dtype']} (teacher 135M, student 90M)")
    print("| variant | rel. diff vs single, step 1 | max over steps | tokens/s | vs single | "
          "rank-0 training peak memory (GiB) | vs single |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['step1_rel_diff_vs_single']:.1e} | {r['max_rel_diff_vs_single']:.1e} | {r['tokens_per_second']:.1f} | "
              f"{r['tokens_per_second_vs_single']:.3f} | {r['training_peak_memory_gib']:.2f} | {r['peak_memory_vs_single']:.3f} |")


if __name__ == "__main__":
    main()
