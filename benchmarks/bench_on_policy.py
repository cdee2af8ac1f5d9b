"""Step time of on-policy distillation (GKD, the ``on_policy`` block) against off-policy
distillation, and generation tokens/s, on the real teacher (SmolLM2-135M) and student (90M).

Recipe part: each ``--lmbdas`` value is its own ``tune run`` of
``configs/smollm2/135M_to_90M_gkd_quick.yaml`` (same data, batch, sequence length and steps;
``shuffle=False``); ``lmbda`` 0 never generates, so it is the off-policy recipe. Step time is
the time between consecutive steps' metric records (steps after the first), reported as the
median over all steps and over the on-policy and data steps apart, with the generated tokens
per on-policy step and the recipe's own generation tokens/s (median over on-policy steps).

Generation part: the student alone generating ``--max-new-tokens`` tokens (no stop token, so
every row generates them all) for the first Dolly train prompts at each ``--gen-batch-sizes``,
with the KV cache (``jsd_loss.generation.generate``) and, at batch size 1, a loop that
recomputes the whole sequence at every step (what the cache saves).

    python benchmarks/bench_on_policy.py --steps 12 --json-out bench_on_policy.json   # needs models/
    python benchmarks/bench_on_policy.py --tiny                                        # smoke run only
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, add_json_args, add_run_args, check_model_dirs, emit_json

GKD = REPO / "configs" / "smollm2" / "135M_to_90M_gkd_quick.yaml"
DOLLY = REPO.parent / "shared" / "data" / "databricks-dolly-15k" / "databricks-dolly-15k.jsonl"
TINY = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=100_000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu")


def _tiny_dirs(root: Path, tokenizer_from: Path):
    """Tiny random SmolLM2-architecture teacher and student with the real tokenizer (smoke runs)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dirs = []
    for name, seed in (("teacher", 1), ("student", 2)):
        torch.manual_seed(seed)
        LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(str(root / name))
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if (tokenizer_from / f).is_file():
                shutil.copy2(tokenizer_from / f, root / name / f)
        dirs.append(str(root / name))
    return dirs


def _config(lmbda: float, args, out: Path) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(GKD)
    cfg.output_dir = str(out)
    cfg.teacher_dir, cfg.student_dir = args.teacher_dir, args.student_dir
    cfg.max_steps_per_epoch, cfg.batch_size = args.steps, args.batch_size
    cfg.tokenizer.max_seq_len = args.max_seq_len
    cfg.save_every_n_steps, cfg.shuffle = None, False
    cfg.on_policy.lmbda, cfg.on_policy.max_new_tokens = lmbda, args.max_new_tokens
    cfg.on_policy.log_samples = False
    if args.tiny:
        cfg.dataset.source, cfg.dataset.max_rows = str(DOLLY), 4 * args.batch_size * args.steps
        for key, d in (("model", args.student_dir), ("teacher_model", args.teacher_dir)):
            cfg[key] = {"_component_": "jsd_loss.models.smollm2.smollm2_from_hf_config", "path": d}
        cfg.mixed_precision = cfg.teacher_dtype = None
    path = out.parent / f"lmbda_{lmbda}.yaml"
    OmegaConf.save(cfg, path)
    return path


def run_recipe(lmbda: float, args, tmp: Path) -> dict:
    out = tmp / f"lmbda_{lmbda}"
    proc = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "run",
                           "jsd_loss/recipes/jsd_distill_single_device.py", "--config", str(_config(lmbda, args, out))],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmbda={lmbda} failed:\n{proc.stderr[-4000:]}")
    records = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [(b["time"] - a["time"], b) for a, b in zip(records, records[1:])]  # steps after the first
    on = [(t, r) for t, r in steps if r["on_policy"]]
    off = [t for t, r in steps if not r["on_policy"]]
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {
        "steps": len(records), "on_policy_steps": int(sum(r["on_policy"] for r in records)),
        "step_seconds": med([t for t, _ in steps]),
        "step_seconds_on_policy": med([t for t, _ in on]), "step_seconds_data": med(off),
        "step_seconds_mean": statistics.mean(t for t, _ in steps) if steps else None,
        "generated_tokens_per_on_policy_step": med([r["generated_tokens"] for _, r in on]),
        "generation_tokens_per_second": med([r["generation_tokens_per_second"] for _, r in on]),
        "generation_share_of_on_policy_step": med([r["generation_seconds"] / t for t, r in on]),
    }


def run_generation(args) -> dict:
    """The student alone: KV-cache generation tokens/s per batch size, and full recompute at 1."""
    import torch

    from jsd_loss.datasets import dolly_dataset
    from jsd_loss.eval import load_model
    from jsd_loss.generation import generate
    from jsd_loss.models.smollm2 import smollm2_tokenizer
    from jsd_loss.training import prompt_length

    torch.set_num_threads(args.threads)
    model = load_model(args.student_dir, torch.float32, torch.device("cpu"))
    tok = smollm2_tokenizer(str(Path(args.student_dir) / "tokenizer.json"), max_seq_len=args.max_seq_len)
    ds = dolly_dataset(tok, source=str(DOLLY), max_rows=64)
    prompts = [s["tokens"][:p] for s in (ds[i] for i in range(len(ds)))
               if (p := prompt_length(s["labels"], -100)) and p + args.max_new_tokens <= args.max_seq_len]
    n, rows = args.max_new_tokens, {}
    for bsz in args.gen_batch_sizes:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        generate(model, prompts[:bsz], max_new_tokens=n, stop_tokens=[], generator=g, dtype=torch.float32,
                 device=torch.device("cpu"))
        rows[f"kv_cache_batch_{bsz}"] = bsz * n / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        seq, t0 = list(prompts[0]), time.perf_counter()
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        rows["recompute_batch_1"] = n / (time.perf_counter() - t0)
    return {"tokens_per_second": rows, "max_new_tokens": n, "threads": args.threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, steps=12)
    p.add_argument("--lmbdas", default="0,0.5", help="comma-separated lmbda values, one run each")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--gen-batch-sizes", default="1,2,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=2, help="torch threads of the generation part")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--tiny", action="store_true", help="smoke run: tiny random models, 2 steps, 4 new tokens")
    add_json_args(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tiny:
            args.teacher_dir, args.student_dir = _tiny_dirs(tmp / "models", Path(args.teacher_dir))
            args.steps, args.max_new_tokens, args.max_seq_len, args.lmbdas = 2, 4, 128, "0,1"
            args.gen_batch_sizes = [1, 2]
        else:
            check_model_dirs(args)
        runs = {f"lmbda_{x}": run_recipe(float(x), args, tmp) for x in args.lmbdas.split(",")}
        generation = None if args.skip_generation else run_generation(args)
    report = {"config": {k: getattr(args, k) for k in ("steps", "batch_size", "max_seq_len", "max_new_tokens", "tiny")},
              "runs": runs}
    base = next((r for name, r in runs.items() if float(name.split("_", 1)[1]) == 0), None)
    for name, r in runs.items():
        if base is not None and r is not base and base["step_seconds_mean"]:
            report[f"{name}_vs_lmbda_0_step_seconds_mean"] = r["step_seconds_mean"] / base["step_seconds_mean"]
    if generation is not None:
        report["generation"] = generation
    if emit_json(report, args):
        return
    c = report["config"]
    print(f"steps={c['steps']} batch_size={c['batch_size']} max_seq_len={c['max_seq_len']} "
          f"max_new_tokens={c['max_new_tokens']}{' (TINY smoke run)' if c['tiny'] else ''}")
    print("| run | on-policy steps | step s (median) | on-policy step s | data step s | generated tokens/step "
          "| generation tokens/s | generation share |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda x, f=".2f": "–" if x is None else format(x, f)  # noqa: E731
    for name, r in runs.items():
        print(f"| {name} | {r['on_policy_steps']}/{r['steps']} | {fmt(r['step_seconds'])} | "
              f"{fmt(r['step_seconds_on_policy'])} | {fmt(r['step_seconds_data'])} | "
              f"{fmt(r['generated_tokens_per_on_policy_step'], '.0f')} | {fmt(r['generation_tokens_per_second'], '.1f')} "
              f"| {fmt(r['generation_share_of_on_policy_step'])} |")
    for key, value in report.items():
        if isinstance(value, float):
            print(f"{key} = {value:.3f}")
    if "generation" in report:
        for key, value in report["generation"]["tokens_per_second"].items():
            print(f"generation {key}: {value:.1f} tokens/s")


if __name__ == "__main__":
    main()
