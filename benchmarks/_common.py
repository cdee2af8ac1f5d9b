"""What the benchmark scripts share: the JSON output options and the real-model arguments."""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_json_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", help="also write the JSON object to this file")


def add_model_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-dir", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--student-dir", default=str(REPO / "models" / "smollm2-90m-student"))


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
