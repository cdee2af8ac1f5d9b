"""Held-out Dolly NLL per response token of HF model directories (the eval split, never
trained on or calibrated on), appended to a JSON file keyed by directory.

    EVAL_ROWS=60 .venv/bin/python results/2026-11-25-pruning/heldout_nll.py OUT.json DIR [DIR ...]

EVAL_ROWS=0 (default) scores all 229 eval rows; 60 scores the first 60, as bench_prune does.
"""

import json
import os
import sys
import time

from jsd_loss.datasets import dolly_dataset
from jsd_loss.metrics import response_nll
from jsd_loss.models.smollm2 import SmolLM2Tokenizer, smollm2_from_hf

TOKENIZER = "models/smollm2-135m-instruct/tokenizer.json"


def main(out_path: str, model_dirs) -> None:
    ds = dolly_dataset(SmolLM2Tokenizer(TOKENIZER), split="eval")
    n = int(os.environ.get("EVAL_ROWS", "0")) or len(ds)
    samples = [(ds[i]["tokens"], ds[i]["labels"]) for i in range(n)]
    results = json.load(open(out_path)) if os.path.exists(out_path) else {}
    for model_dir in model_dirs:
        if model_dir in results:
            continue
        start = time.time()
        total, count = response_nll(smollm2_from_hf(model_dir), samples)
        results[model_dir] = {"heldout_nll": total / count, "tokens": count, "rows": n}
        print(model_dir, results[model_dir], f"{time.time() - start:.0f}s", flush=True)
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
