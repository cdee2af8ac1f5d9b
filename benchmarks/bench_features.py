"""Feature distillation against logits only: held-out NLL against tokens seen, for the default
(width-pruned) and a depth-pruned student, several seeds, each run its own ``tune run``.

For every student kind, seed and variant (``logits``: configs/smollm2/135M_to_90M_jsd_quick.yaml;
``features``: configs/smollm2/135M_to_90M_jsd_features_quick.yaml, the same plus the feature
term), the run saves a checkpoint every ``--every`` steps; each is scored (mean NLL per response
token on the first ``--heldout-rows`` held-out Dolly rows) and deleted, the final student kept
under ``--work`` for the eval recipe. Tokens seen after each step are counted from the run's own
data loader (label tokens, the recipe's count, and real tokens, prompt and response). The fraction
of tokens the feature run needs to reach the logit-only run's final NLL interpolates its curve
linearly between checkpoints (starting from the untrained student's NLL at 0 tokens); a curve
that never gets there reports None. Step-time overhead: the median tokens/s of the two variants.

    python benchmarks/bench_features.py --students default=models/smollm2-90m-student,depth=DIR \\
        --seeds 42,43 --work outputs/features_study --json-out bench_features.json
"""

import argparse
import itertools
import json
import shutil
import statistics
from pathlib import Path

from _common import REPO, add_json_args, emit_json, run_distillation, tokens_per_step
from bench_recipe import heldout_nll

CONFIGS = {"logits": "135M_to_90M_jsd_quick.yaml", "features": "135M_to_90M_jsd_features_quick.yaml"}


def _config(variant: str, student_dir: Path, seed: int, args, out: Path) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs" / "smollm2" / CONFIGS[variant])
    cfg.output_dir = str(out)
    cfg.teacher_dir, cfg.student_dir = str((REPO / args.teacher_dir).resolve()), str(student_dir)
    cfg.dataset.source = str((REPO / cfg.dataset.source).resolve())
    cfg.seed = seed
    cfg.max_steps_per_epoch = args.steps
    cfg.save_every_n_steps = args.every
    cfg.keep_last_n_checkpoints = None  # every checkpoint is scored after the run (then deleted here)
    if student_dir.resolve() != (REPO / "models" / "smollm2-90m-student").resolve():
        cfg.model = {"_component_": "jsd_loss.models.smollm2.smollm2_from_hf_config", "path": str(student_dir)}
    path = out.parent / f"{out.name}.yaml"
    OmegaConf.save(cfg, path)
    return path


def tokens_to_reach(tokens: list, nll: list, target: float):
    """Tokens at which the piecewise-linear curve (tokens, nll) first reaches ``target``; None if never."""
    for (t0, n0), (t1, n1) in zip(zip(tokens, nll), zip(tokens[1:], nll[1:])):
        if n0 <= target:
            return t0
        if n1 <= target:
            return t0 + (t1 - t0) * (n0 - target) / (n0 - n1)
    return None


def run(kind: str, student_dir: Path, seed: int, variant: str, args) -> dict:
    out = Path(args.work) / f"{kind}_{variant}_s{seed}"
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = _config(variant, student_dir, seed, args, out)
    run_distillation(config, out.name)
    steps = list(range(args.every, args.steps, args.every)) + [args.steps]
    nll = []
    for step in steps:
        ckpt = out / ("final" if step == args.steps else f"step_{step}")
        nll.append(heldout_nll(ckpt, args.heldout_rows, args.max_seq_len))
        if ckpt.name != "final":
            shutil.rmtree(ckpt)
    from jsd_loss.training import read_metrics

    records = read_metrics(out / "logs")
    per_step = tokens_per_step(config, args.steps)
    label_seen = [0, *itertools.accumulate(label for label, _ in per_step)]
    real_seen = [0, *itertools.accumulate(real for _, real in per_step)]
    return {"steps": steps, "heldout_nll": nll, "label_tokens": [label_seen[s] for s in steps],
            "real_tokens": [real_seen[s] for s in steps], "final_dir": str(out / "final"),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in records[1:]),
            "final_feature_loss": records[-1].get("feature_loss")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", required=True, help="kind=DIR,kind=DIR")
    p.add_argument("--teacher-dir", default="models/smollm2-135m-instruct")
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--heldout-rows", type=int, default=60)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--work", required=True, help="where the runs' final students are kept")
    add_json_args(p)
    args = p.parse_args()
    students = {kind: Path(d).resolve() for kind, d in (s.split("=", 1) for s in args.students.split(","))}
    for kind, d in students.items():
        if not (d / "config.json").is_file():
            raise SystemExit(f"student {kind!r}: {d} is not a model directory")
    report = {"config": {k: getattr(args, k) for k in ("seeds", "steps", "every", "heldout_rows", "max_seq_len")},
              "students": {}}
    for kind, student_dir in students.items():
        entry = {"dir": str(student_dir), "initial_nll": heldout_nll(student_dir, args.heldout_rows, args.max_seq_len),
                 "runs": {}}
        for seed in map(int, args.seeds.split(",")):
            for variant in CONFIGS:
                entry["runs"][f"{variant}_s{seed}"] = run(kind, student_dir, seed, variant, args)
                Path(args.work, "progress.json").write_text(json.dumps(report | {"partial": {kind: entry}}, indent=1))
            logits, feats = entry["runs"][f"logits_s{seed}"], entry["runs"][f"features_s{seed}"]
            tokens = [0] + feats["label_tokens"]
            reach = tokens_to_reach(tokens, [entry["initial_nll"]] + feats["heldout_nll"], logits["heldout_nll"][-1])
            entry["runs"][f"features_s{seed}"]["tokens_fraction_to_logits_final_nll"] = (
                None if reach is None else reach / logits["label_tokens"][-1])
            entry["runs"][f"features_s{seed}"]["step_time_overhead"] = (
                logits["tokens_per_second"] / feats["tokens_per_second"] - 1)
        report["students"][kind] = entry
    if emit_json(report, args):
        return
    print("| student | seed | logits final NLL | features final NLL | tokens fraction to logits' final NLL | "
          "step-time overhead |")
    print("|---|---|---|---|---|---|")
    for kind, entry in report["students"].items():
        for seed in args.seeds.split(","):
            lo, fe = entry["runs"][f"logits_s{seed}"], entry["runs"][f"features_s{seed}"]
            frac = fe["tokens_fraction_to_logits_final_nll"]
            print(f"| {kind} | {seed} | {lo['heldout_nll'][-1]:.4f} | {fe['heldout_nll'][-1]:.4f} | "
                  f"{'not reached' if frac is None else f'{frac:.2f}'} | {fe['step_time_overhead']:+.1%} |")


if __name__ == "__main__":
    main()
