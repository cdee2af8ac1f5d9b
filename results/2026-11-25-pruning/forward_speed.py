"""Forward tokens/s of each student shape of bench_prune_scores.json on an otherwise idle CPU (random
weights of the shape: speed does not depend on the values), one process, same batch for all.

    .venv/bin/python results/2026-11-25-pruning/forward_speed.py > results/2026-11-25-pruning/forward_speed.json
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from jsd_loss.models.smollm2 import hf_config_to_smollm2_args, smollm2
from jsd_loss.pruning import pruned_config

HERE = Path(__file__).parent
TEACHER = json.loads(Path("models/smollm2-135m-instruct/config.json").read_text())


@torch.no_grad()
def tokens_per_second(model, batch=4, seq=256, repeats=5) -> float:
    x = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


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
                     "forward_tokens_per_second": tokens_per_second(model)}
        print(name, out[name], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
