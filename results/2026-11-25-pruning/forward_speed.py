"""Forward tokens/s of each student shape of bench_prune_scores.json on an otherwise idle CPU (random
weights of the shape: speed does not depend on the values), one process, same batch for all.

    .venv/bin/python results/2026-11-25-pruning/forward_speed.py > results/2026-11-25-pruning/forward_speed.json
"""

import json
import sys
from pathlib import Path

from jsd_loss.models.smollm2 import hf_config_to_smollm2_args, smollm2
from jsd_loss.pruning import pruned_config

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
from bench_prune import _forward_tokens_per_second  # noqa: E402  (the benchmark's own timing)

TEACHER = json.loads(Path("models/smollm2-135m-instruct/config.json").read_text())


def main() -> None:
    report = json.loads((HERE / "bench_prune_scores.json").read_text())
    shapes = {"teacher": {}}
    for key, row in report["students"].items():
        s = row["shape"]
        shapes.setdefault(json.dumps(s, sort_keys=True), {**s, "students": []})["students"].append(key)
    out = {}
    for name, shape in shapes.items():
        fields = {k: v for k, v in shape.items() if k != "students"}
        model = smollm2(**hf_config_to_smollm2_args(pruned_config(TEACHER, **fields))).eval()
        out[name] = {"shape": fields, "students": shape.get("students", ["teacher"]),
                     "forward_tokens_per_second": _forward_tokens_per_second(model, repeats=5)}
        print(name, out[name], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
