"""Throughput and peak memory of the distillation recipes, side by side in one run.

Same teacher (SmolLM2-135M-Instruct), student (the pruned 90M), data (Dolly train), batch
and sequence length for every variant:

* ``stock_lora``: torchtune's own ``knowledge_distillation_single_device``, LoRA student
  (the only kind it supports), our chunked JSD as ``kd_loss``;
* ``ours_lora``: our recipe, same LoRA student and loss;
* ``ours_full_chunked``: our recipe, full-parameter student, chunked JSD;
* ``ours_full_unchunked``: full-parameter student, token-level JSD on full logits;
* ``ours_full_fused``: full-parameter student, fused-linear JSD (CE from the same pass);
* ``cached_chunked``: as ``ours_full_chunked`` with the teacher read from a top-k cache
  (``teacher_cache``; the teacher is not loaded), built first for exactly the rows the run
  draws by ``jsd_loss/recipes/cache_teacher.py`` (its rows/s and bytes per token reported);
* ``packed_chunked`` / ``cached_packed``: the same two with ``dataset.packed: True``;
* ``features_chunked``: as ``ours_full_chunked`` plus the ``feature_distillation`` block of
  ``135M_to_90M_jsd_features_quick.yaml`` (not in the default list; ``--variants``).

``--heldout-nll N`` also scores every variant's final student on the first N held-out Dolly
rows (response NLL), the quality side of the speed ratios.

Each variant runs in its own process (``tune run``); tokens/s is the median over the steps
after the first (unmasked label tokens per second of step time, as both recipes log it),
peak memory is the process's peak RSS (CPU) as seen by the parent, and, for our recipe, the
peak RSS of the training steps alone (the recipe resets the high-water mark after loading the
checkpoints, whose own peak otherwise dominates).

    python benchmarks/bench_recipe.py --steps 8              # needs models/ (README: prepare)
    python benchmarks/bench_recipe.py --json                 # one JSON object
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, add_json_args, add_run_args, check_model_dirs, emit_json

BASE = REPO / "configs" / "smollm2" / "135M_to_90M_jsd_quick.yaml"
FEATURES = REPO / "configs" / "smollm2" / "135M_to_90M_jsd_features_quick.yaml"
LORA = {"_component_": "jsd_loss.models.smollm2.lora_smollm2_90m", "lora_attn_modules": ["q_proj", "v_proj"],
        "apply_lora_to_mlp": True, "lora_rank": 16, "lora_alpha": 32}
VARIANTS = ["stock_lora", "ours_lora", "ours_full_chunked", "ours_full_unchunked", "ours_full_fused",
            "cached_chunked", "packed_chunked", "cached_packed"]


def _config(variant: str, args, out: Path) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(BASE)
    cfg.output_dir = str(out)
    cfg.teacher_dir, cfg.student_dir = args.teacher_dir, args.student_dir
    cfg.max_steps_per_epoch = args.steps
    cfg.batch_size = args.batch_size
    cfg.tokenizer.max_seq_len = args.max_seq_len
    cfg.save_every_n_steps = None
    cfg.shuffle = False
    if "lora" in variant:
        cfg.model = dict(LORA)
    if variant == "ours_full_unchunked":
        cfg.loss = {"_component_": "torch.nn.CrossEntropyLoss", "ignore_index": -100}
        cfg.kd_loss = {"_component_": "jsd_loss.JSDistillLoss", "beta": 0.5}
    if variant == "ours_full_fused":
        cfg.kd_loss = {"_component_": "jsd_loss.FusedLinearJSDistillLoss", "beta": 0.5, "return_ce": True}
    if variant.startswith("cached"):
        cfg.teacher_cache = str(out.parent / f"cache_{variant}")
        cfg.cache = {"k": args.k, "rows": "run"}
    if "packed" in variant:
        cfg.dataset.packed = True
    if variant.startswith("features"):
        cfg.feature_distillation = OmegaConf.load(FEATURES).feature_distillation
    if variant == "stock_lora":
        cfg.compile = False
        cfg.enable_activation_checkpointing = False
        cfg.log_peak_memory_stats = False
        cfg.metric_logger = {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": str(out / "logs")}
    path = out.parent / f"{variant}.yaml"
    OmegaConf.save(cfg, path)
    return path


def _step_logs(variant: str, out: Path):
    """Per-step tokens/s, and (our recipe only) the training-phase peak RSS in GiB."""
    if variant == "stock_lora":
        text = "".join(p.read_text() for p in (out / "logs").glob("*.txt"))
        return [float(x) for x in re.findall(r"tokens_per_second_per_gpu:([0-9.eE+-]+)", text)], None
    records = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_second"] for r in records], max(r["peak_memory_gib"] for r in records)


def build_cache(config: Path) -> dict:
    """Build the teacher cache a cached variant's config names; its rows/s and bytes per token."""
    import time

    from omegaconf import OmegaConf

    from jsd_loss.teacher import TopKTeacherCache

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "run", "jsd_loss/recipes/cache_teacher.py",
                           "--config", str(config)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cache build failed:\n{proc.stderr[-4000:]}")
    seconds = time.perf_counter() - t0
    cache_dir = Path(OmegaConf.load(config).teacher_cache)
    cache = TopKTeacherCache(cache_dir)
    on_disk = sum(f.stat().st_size for f in cache_dir.rglob("*.bin"))
    rate = re.search(r"\(([0-9.]+) rows/s\)", proc.stdout + proc.stderr)
    return {"rows": len(cache), "tokens": cache.num_tokens(), "bytes_per_token": on_disk / max(cache.num_tokens(), 1),
            "rows_per_second": float(rate.group(1)) if rate else None, "wall_seconds_with_load": seconds}


def heldout_nll(model_dir: Path, rows: int, max_seq_len: int) -> float:
    """Mean response NLL of a saved student on the first ``rows`` held-out Dolly rows."""
    from jsd_loss.checkpointing import load_state_dict, read_config
    from jsd_loss.datasets import dolly_dataset
    from jsd_loss.metrics import response_nll
    from jsd_loss.models.smollm2 import smollm2_from_hf_state, smollm2_tokenizer

    model = smollm2_from_hf_state(read_config(model_dir), load_state_dict(model_dir)).eval()
    tok = smollm2_tokenizer(str(model_dir / "tokenizer.json"), max_seq_len=max_seq_len)
    ds = dolly_dataset(tok, split="eval", max_rows=rows)
    total, count = response_nll(model, [(s["tokens"], s["labels"]) for s in (ds[i] for i in range(len(ds)))])
    return total / count


def run_worker(variant: str, config: Path) -> dict:
    """Runs one variant as this process's only child and reports its peak RSS."""
    import resource

    recipe = "knowledge_distillation_single_device" if variant == "stock_lora" \
        else "jsd_loss/recipes/jsd_distill_single_device.py"
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "run", recipe, "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-4000:]}")
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, steps=8)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--k", type=int, default=128, help="top-k of the cached variants")
    p.add_argument("--heldout-nll", type=int, default=0, metavar="N", help="score each final student on N eval rows")
    add_json_args(p)
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], Path(args.worker[1]))))
        return
    check_model_dirs(args)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            out = Path(tmp) / variant
            config = _config(variant, args, out)
            if variant.startswith("cached"):
                cache_stats = build_cache(config)
            res = subprocess.run([sys.executable, __file__, "--worker", variant, str(config)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-4000:])
            tps, train_peak = _step_logs(variant, out)
            rows[variant] = {"tokens_per_second": statistics.median(tps[1:] or tps), "steps": len(tps),
                             "training_peak_rss_gib": train_peak,
                             **json.loads(res.stdout.strip().splitlines()[-1])}
            if variant.startswith("cached"):
                rows[variant]["cache"] = cache_stats
            if args.heldout_nll:
                rows[variant]["heldout_nll"] = heldout_nll(out / "final", args.heldout_nll, args.max_seq_len)
    report = {"config": {k: getattr(args, k) for k in ("steps", "batch_size", "max_seq_len")}, "variants": rows}
    if "stock_lora" in rows and "ours_lora" in rows:
        report["ours_vs_stock_tokens_per_second"] = rows["ours_lora"]["tokens_per_second"] / rows["stock_lora"]["tokens_per_second"]
    if "ours_full_fused" in rows and "ours_full_chunked" in rows:
        report["fused_vs_chunked_peak_rss"] = rows["ours_full_fused"]["peak_rss_bytes"] / rows["ours_full_chunked"]["peak_rss_bytes"]
        report["fused_vs_chunked_training_peak_rss"] = (
            rows["ours_full_fused"]["training_peak_rss_gib"] / rows["ours_full_chunked"]["training_peak_rss_gib"]
        )
    for a, b, key in (("cached_chunked", "ours_full_chunked", "cached_vs_live_teacher"),
                      ("packed_chunked", "ours_full_chunked", "packed_vs_padded"),
                      ("cached_packed", "packed_chunked", "cached_vs_live_teacher_packed"),
                      ("features_chunked", "ours_full_chunked", "features_vs_logits_only")):
        if a in rows and b in rows:
            report[f"{key}_tokens_per_second"] = rows[a]["tokens_per_second"] / rows[b]["tokens_per_second"]
            if args.heldout_nll:
                report[f"{key}_heldout_nll_relative"] = rows[a]["heldout_nll"] / rows[b]["heldout_nll"] - 1
    if emit_json(report, args):
        return
    c = report["config"]
    print(f"steps={c['steps']} batch_size={c['batch_size']} max_seq_len={c['max_seq_len']} (teacher 135M, student 90M, CPU)")
    print("| variant | tokens/s (median) | peak RSS, whole process (GiB) | peak RSS, training steps (GiB) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        train = f"{r['training_peak_rss_gib']:.2f}" if r["training_peak_rss_gib"] is not None else "–"
        print(f"| {name} | {r['tokens_per_second']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} | {train} |")
    for key, value in report.items():
        if isinstance(value, float):
            print(f"{key} = {value:.3f}")


if __name__ == "__main__":
    main()
