"""Model export.

    python -m jsd_loss.export gguf --model-dir outputs/135M_to_90M_jsd_quick/final \\
        --output smollm2-90m-jsd.q8_0.gguf --type q8_0 [--overwrite]
"""

import argparse
import logging
import sys

from jsd_loss.export import EXPORT_TYPES, export_gguf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsd_loss.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gguf", help="a HF Llama directory as one llama.cpp GGUF file")
    g.add_argument("--model-dir", required=True, help="HF directory (config.json, safetensors, tokenizer.json)")
    g.add_argument("--output", required=True, help="the .gguf file to write")
    g.add_argument("--type", choices=sorted(EXPORT_TYPES), default="f16",
                   help="storage of 2-D weights; norms stay f32 (default: f16)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines name our temporary file
    try:
        export_gguf(args.model_dir, args.output, args.type, args.overwrite)
    except (OSError, ValueError) as e:  # missing/existing files, disk errors, refused shapes
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
