"""Optimizer-state memory of the 1.7B -> 360M config's student (SmolLM2-360M, 362M
parameters, random weights of the real shapes), per optimizer, after one step.

Counted: the bytes of every tensor the optimizer keeps per parameter (for torchao's
quantised states, the bytes of their inner tensors: int8 codes and block scales), and the
process's RSS growth over the step. Each optimizer runs in its own process. The torchao optimizers' first step holds their
torch.compile (a minute or more on 2 CPU cores).

    python benchmarks/bench_optimizer_state.py --json
"""

import argparse
import gc
import json
import subprocess
import sys
import time

import torch

from _common import add_json_args, emit_json

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-5, fused=True),
    "torchao_adamw8bit": lambda params: __import__("torchao.optim", fromlist=["AdamW8bit"]).AdamW8bit(params, lr=1e-5),
    "torchao_adamw_bf16_sr": lambda params: __import__("torchao.optim", fromlist=["_AdamW"])._AdamW(
        params, lr=1e-5, bf16_stochastic_round=True),
}


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of ``t``; a tensor subclass counts its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(name: str) -> dict:
    from jsd_loss.models.smollm2 import smollm2_360m

    torch.manual_seed(0)
    dtype = torch.bfloat16 if name == "torchao_adamw_bf16_sr" else torch.float32
    model = smollm2_360m().to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = OPTIMIZERS[name](params)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    optimizer.step()
    seconds = time.perf_counter() - start
    state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    n = sum(p.numel() for p in params)
    return {"parameters": n, "param_dtype": str(dtype), "state_bytes": state, "state_bytes_per_parameter": state / n,
            "rss_growth_bytes": rss_bytes() - before, "first_step_seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--one", choices=sorted(OPTIMIZERS), help=argparse.SUPPRESS)
    add_json_args(p)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = {}
    for name in args.optimizers.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {"model": "smollm2_360m (random weights)", "optimizers": rows}
    if "adamw" in rows:
        report["vs_adamw_state_bytes"] = {k: r["state_bytes"] / rows["adamw"]["state_bytes"] for k, r in rows.items()}
    if emit_json(report, args):
        return
    print("| optimizer | parameters | state | bytes / parameter | RSS growth over the step | vs AdamW |")
    print("|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} ({r['param_dtype']}) | {r['parameters'] / 1e6:.1f}M | {r['state_bytes'] / 2**30:.3f} GiB | "
              f"{r['state_bytes_per_parameter']:.3f} | {r['rss_growth_bytes'] / 2**30:.3f} GiB | "
              f"{report.get('vs_adamw_state_bytes', {}).get(k, float('nan')):.3f} |")


if __name__ == "__main__":
    main()
