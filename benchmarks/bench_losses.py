"""Forward+backward time and peak memory of the KD loss forms, side by side.

Every method starts from the same final hidden states and output weights (student and
teacher) and includes the output projection, since that is where the forms differ:

* ``naive_jsd``: full ``(tokens, vocab)`` logits and the JSD written with plain autograd
  (:func:`generalized_jsd`), as one would without this package.
* ``torchtune_fkl_chunked``: torchtune's ``ForwardKLWithChunkedOutputLoss`` on logits
  chunked the way ``TransformerDecoder.chunked_output`` chunks them.
* ``chunked_jsd``: :class:`JSDistillWithChunkedOutputLoss` on the same chunks.
* ``fused_linear_jsd``: :class:`FusedLinearJSDistillLoss` on hidden states and weights.
* with ``--divergences alpha_beta skew_kl ...``, also ``naive_<name>``, ``chunked_<name>`` and
  ``fused_linear_<name>``: full logits with the per-token :class:`DistillLoss` (plain autograd
  through the divergence's definition, as the methods' reference code computes it),
  :class:`DistillWithChunkedOutputLoss` and :class:`FusedLinearDivergenceLoss` with that
  divergence (see ``DIVERGENCES``), and each one's fused-vs-naive ratios.

Each method runs in its own subprocess so that CPU peak memory (``ru_maxrss`` minus the
resident size before the first call) is not polluted by the others; on CUDA the peak is
``torch.cuda.max_memory_allocated`` above the inputs. Time is the median over repeats
after one warm-up call. A method that runs out of memory (``--worker-memory-gib`` caps each
worker's address space, so it fails alone instead of waking the kernel's OOM killer) is
reported as such, and the ratios it would enter are left out.

    python benchmarks/bench_losses.py                 # SmolLM2-135M head: 4096 x 49152 x 576
    python benchmarks/bench_losses.py --json          # one JSON object with the ratios
    python benchmarks/bench_losses.py --tokens 512    # quicker
    python benchmarks/bench_losses.py --json-out results.json   # table, and the JSON in a file
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import psutil
import torch

from _common import add_json_args, emit_json

METHODS = ["naive_jsd", "torchtune_fkl_chunked", "chunked_jsd", "fused_linear_jsd"]
# the divergences --divergences can add, as (class name in jsd_loss, arguments)
DIVERGENCES = {
    "alpha_beta": ("AlphaBetaDivergence", dict(alpha=0.2, beta=0.7)),  # ABKD's smallest-student setting
    "adaptive_kl": ("AdaptiveKLDivergence", dict(mu=0.5)),
    "total_variation": ("TotalVariationDivergence", {}),
    "skew_kl": ("SkewKLDivergence", dict(alpha=0.1)),
}


def _make_step(method, h, w, th, tw, labels, num_chunks, chunk_size):
    from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

    import jsd_loss
    from jsd_loss import (
        DistillLoss,
        DistillWithChunkedOutputLoss,
        FusedLinearDivergenceLoss,
        FusedLinearJSDistillLoss,
        JSDistillWithChunkedOutputLoss,
        generalized_jsd,
    )

    form = name = None
    for key in DIVERGENCES:  # "<form>_<divergence>", both with "_" in them: match the known suffix
        if method.endswith("_" + key):
            form, name = method[: -len(key) - 1], key
    divergence = getattr(jsd_loss, DIVERGENCES[name][0])(**DIVERGENCES[name][1]) if name else None

    def chunked_logits(hidden, weight):
        return [c @ weight.t() for c in hidden.chunk(num_chunks, dim=1)]

    if method == "naive_jsd":
        def step():
            with torch.no_grad():
                t_logits = th @ tw.t()
            return generalized_jsd(h @ w.t(), t_logits).mean()

    elif form == "naive":
        loss_fn = DistillLoss(divergence)

        def step():
            with torch.no_grad():
                t_logits = th @ tw.t()
            return loss_fn(h @ w.t(), t_logits, labels)

    elif method in ("torchtune_fkl_chunked", "chunked_jsd") or form == "chunked":
        if method == "torchtune_fkl_chunked":
            loss_fn = ForwardKLWithChunkedOutputLoss(num_chunks)
        elif divergence is not None:
            loss_fn = DistillWithChunkedOutputLoss(divergence, num_chunks)
        else:
            loss_fn = JSDistillWithChunkedOutputLoss(num_chunks)

        def step():
            with torch.no_grad():
                t_chunks = chunked_logits(th, tw)
            return loss_fn(chunked_logits(h, w), t_chunks, labels)

    elif method == "fused_linear_jsd" or form == "fused_linear":
        loss_fn = (FusedLinearDivergenceLoss(divergence, chunk_size=chunk_size) if divergence is not None
                   else FusedLinearJSDistillLoss(chunk_size=chunk_size))

        def step():
            return loss_fn(h, w, th, tw, labels)

    else:
        raise ValueError(f"unknown method {method!r}")
    return step


def run_worker(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    shape_h = (1, args.tokens, args.hidden)
    h = (torch.randn(shape_h, generator=g) * 0.5).to(device, dtype).requires_grad_(True)
    w = (torch.randn(args.vocab, args.hidden, generator=g) * 0.05).to(device, dtype)
    w.requires_grad_(True)
    th = (torch.randn(shape_h, generator=g) * 0.5).to(device, dtype)
    tw = (torch.randn(args.vocab, args.hidden, generator=g) * 0.05).to(device, dtype)
    labels = torch.randint(0, args.vocab, (1, args.tokens), generator=g).to(device)
    step = _make_step(args.method, h, w, th, tw, labels, args.num_chunks, args.chunk_size)

    def run_once():
        h.grad = w.grad = None
        step().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = psutil.Process().memory_info().rss
    times = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        run_once()
        if i > 0:  # the first call is a warm-up
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"method": args.method, "time_s": statistics.median(times), "peak_bytes": peak}


def _limit_address_space(gib):
    """A ``preexec_fn`` capping the worker's address space at ``gib`` GiB (None: no cap)."""
    if gib is None:
        return None
    limit = int(gib * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_method(cmd, worker_memory_gib) -> dict:
    """One worker's measurements, or ``{"error": ...}`` when it failed (out of memory, named as such)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_address_space(worker_memory_gib))
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    out_of_memory = proc.returncode == -9 or any(
        s in proc.stderr for s in ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory"))
    if out_of_memory:
        cap = f"the worker's cap of {worker_memory_gib:g} GiB" if worker_memory_gib else "the machine's memory"
        return {"error": f"out of memory ({cap})"}
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    raise RuntimeError(f"{cmd[3]} failed: {tail[0]}")


def _naive_of(method: str) -> str:
    """The full-logits baseline a method is compared with: its divergence's ``naive_`` row."""
    for name in DIVERGENCES:
        if method.endswith("_" + name):
            return "naive_" + name
    return "naive_jsd"


def _ratio(rows, method, baseline, key):
    a, b = rows.get(method, {}), rows.get(baseline, {})
    return a[key] / b[key] if key in a and key in b else None


def _fmt(value, spec=".3f", suffix=""):
    return "n/a (a side ran out of memory)" if value is None else f"{value:{spec}}{suffix}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--num-chunks", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=256, help="fused-linear token chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default=None, help="default: every device present (cpu, cuda)")
    p.add_argument("--divergences", nargs="*", default=[], choices=sorted(DIVERGENCES),
                   help="also measure these divergences in the chunked and fused-linear forms")
    add_json_args(p)
    p.add_argument("--worker-memory-gib", type=float, default=None,
                   help="cap each method's worker at this address space (a method over it is reported out of memory)")
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.method:  # worker subprocess
        print(json.dumps(run_worker(args)))
        return

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {
        "config": {k: getattr(args, k) for k in ("tokens", "vocab", "hidden", "num_chunks", "chunk_size", "repeats", "dtype")},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": {},
    }
    for device in devices:
        rows = {}
        extra = [f"{form}_{name}" for name in args.divergences for form in ("naive", "chunked", "fused_linear")]
        for method in METHODS + extra:
            cmd = [sys.executable, __file__, "--method", method, "--device", device]
            for k in ("tokens", "vocab", "hidden", "num_chunks", "chunk_size", "repeats", "dtype"):
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
            rows[method] = _run_method(cmd, args.worker_memory_gib)
        ratios = {
            "fused_vs_naive_peak_memory": _ratio(rows, "fused_linear_jsd", "naive_jsd", "peak_bytes"),
            "fused_vs_naive_time": _ratio(rows, "fused_linear_jsd", "naive_jsd", "time_s"),
            "chunked_vs_torchtune_fkl_time": _ratio(rows, "chunked_jsd", "torchtune_fkl_chunked", "time_s"),
        }
        for name in args.divergences:
            ratios[f"fused_vs_naive_peak_memory_{name}"] = _ratio(rows, f"fused_linear_{name}", f"naive_{name}", "peak_bytes")
            ratios[f"fused_vs_naive_time_{name}"] = _ratio(rows, f"fused_linear_{name}", f"naive_{name}", "time_s")
        report["results"][device] = {"methods": rows, **ratios}

    # top-level keys: the first device measured (CPU) unless --device chose one
    first = report["results"][devices[0]]
    for key in ("fused_vs_naive_peak_memory", "fused_vs_naive_time", "chunked_vs_torchtune_fkl_time"):
        report[key] = first[key]
    if emit_json(report, args):
        return
    c = report["config"]
    print(f"tokens={c['tokens']} vocab={c['vocab']} hidden={c['hidden']} dtype={c['dtype']} "
          f"repeats={c['repeats']} torch={report['torch']} threads={report['threads']}")
    for device, res in report["results"].items():
        print(f"\n[{device}]")
        print("| method | fwd+bwd time (s) | peak memory (MiB) | time vs naive | memory vs naive |")
        print("|---|---|---|---|---|")
        for method, r in res["methods"].items():
            if "error" in r:
                print(f"| {method} | {r['error']} | | | |")
                continue
            naive = _naive_of(method)
            print(f"| {method} | {r['time_s']:.3f} | {r['peak_bytes'] / 2**20:.0f} | "
                  f"{_fmt(_ratio(res['methods'], method, naive, 'time_s'), '.2f', 'x')} | "
                  f"{_fmt(_ratio(res['methods'], method, naive, 'peak_bytes'), '.3f', 'x')} |")
        print(f"\nfused_vs_naive_peak_memory = {_fmt(res['fused_vs_naive_peak_memory'])} (target <= 0.15)")
        print(f"fused_vs_naive_time = {_fmt(res['fused_vs_naive_time'])} (target <= 1.0)")
        print(f"chunked_vs_torchtune_fkl_time = {_fmt(res['chunked_vs_torchtune_fkl_time'])} (target <= 1.1)")
        for name in args.divergences:
            print(f"{name}: fused_vs_naive_peak_memory = {_fmt(res[f'fused_vs_naive_peak_memory_{name}'])}, "
                  f"fused_vs_naive_time = {_fmt(res[f'fused_vs_naive_time_{name}'])}")


if __name__ == "__main__":
    main()
