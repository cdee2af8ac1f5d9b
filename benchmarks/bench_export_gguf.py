"""Fidelity, size and time of the GGUF export, checked with an independent reader.

For each type the model directory is exported (``jsd_loss.export.export_gguf``, what
``python -m jsd_loss.export gguf`` runs), loaded back by transformers' own GGUF loader
(``from_pretrained(dir, gguf_file=...)``) and compared with transformers on the HF
directory itself, position by position, on held-out Dolly conversations (ChatML prompt
plus the reference answer, teacher-forced, at most --max-tokens tokens each): the
maximum |logit difference|, the share of positions whose argmax agrees, the mean KL, the
largest reference top-2 margin where the argmax moved, the median relative weight error
(||loaded - original|| / ||original|| over 2-D weights), the file size and the export
time. Token ids come from the directory's ``tokenizer.json`` (transformers does not know
llama.cpp's "smollm" pre-tokenizer, so its GGUF tokenizer is not used).

    python benchmarks/bench_export_gguf.py --model-dir models/smollm2-135m-instruct --prompts 24
    python benchmarks/bench_export_gguf.py --model-dir models/smollm2-90m-student --json
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, add_json_args, emit_json

from jsd_loss.datasets import DEFAULT_DOLLY_PATH, is_eval_row, load_rows, prompt_text
from jsd_loss.export import EXPORT_TYPES, export_gguf


def conversations(model_dir: Path, n: int, max_tokens: int):
    """Token ids of the first ``n`` held-out Dolly rows as ChatML conversations."""
    from torchtune.data import Message

    from jsd_loss.models.smollm2 import smollm2_tokenizer

    tok = smollm2_tokenizer(str(model_dir / "tokenizer.json"))
    rows = [r for r in load_rows(DEFAULT_DOLLY_PATH) if is_eval_row(r)][:n]
    out = []
    for r in rows:
        ids, _ = tok.tokenize_messages([Message(role="user", content=prompt_text(r), masked=True),
                                        Message(role="assistant", content=r["response"])])
        out.append(torch.tensor([ids[:max_tokens]]))
    return out


@torch.no_grad()
def compare(reference, model, inputs) -> dict:
    """``model`` against ``reference`` over every position of ``inputs``: max |logit diff|,
    argmax agreement, mean KL(reference || model) in nats, and the largest reference top-2
    margin among the positions whose argmax changed (small: only near-ties moved)."""
    ref = torch.cat([reference(ids).logits[0] for ids in inputs])
    out = torch.cat([model(ids).logits[0] for ids in inputs])
    flips = ref.argmax(-1) != out.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    log_p, log_q = ref.log_softmax(-1), out.log_softmax(-1)
    return {
        "max_abs_logit_diff": (ref - out).abs().max().item(),
        "argmax_agreement": 1 - flips.float().mean().item(),
        "mean_kl": (log_p.exp() * (log_p - log_q)).sum(-1).mean().item(),
        "max_flip_margin": (top2[:, 0] - top2[:, 1])[flips].max().item() if flips.any() else 0.0,
        "positions": len(ref),
    }


@torch.no_grad()
def weight_error(reference, model) -> float:
    """Median over 2-D weights of ||loaded - original|| / ||original||."""
    loaded = model.state_dict()
    errors = [((loaded[k] - w).norm() / w.norm()).item() for k, w in reference.state_dict().items() if w.ndim == 2]
    return statistics.median(errors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--types", default=",".join(EXPORT_TYPES), help="comma-separated, of " + ",".join(EXPORT_TYPES))
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=256)
    add_json_args(p)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    model_dir = Path(args.model_dir)
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    inputs = conversations(model_dir, args.prompts, args.max_tokens)
    report = {"model_dir": str(model_dir), "prompts": len(inputs), "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for out_type in args.types.split(","):
            path = Path(tmp) / f"model.{out_type}.gguf"
            start = time.perf_counter()
            summary = export_gguf(model_dir, path, out_type)
            seconds = time.perf_counter() - start
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32).eval()
            report["types"][out_type] = {
                **compare(reference, model, inputs),
                "median_weight_rel_error": weight_error(reference, model),
                "file_mb": summary.size_bytes / 1e6, "export_s": seconds, "tensor_types": summary.tensor_types,
            }
            del model
            path.unlink()
    if emit_json(report, args):
        return
    print(f"{model_dir}: {report['prompts']} held-out Dolly conversations, "
          f"{next(iter(report['types'].values()))['positions']} positions")
    print("| type | max abs logit diff | argmax agreement | mean KL (nats) | largest flipped margin | "
          "median weight error | file (MB) | export (s) | tensors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t, r in report["types"].items():
        print(f"| {t} | {r['max_abs_logit_diff']:.3g} | {100 * r['argmax_agreement']:.2f}% | {r['mean_kl']:.2g} | "
              f"{r['max_flip_margin']:.2f} | {100 * r['median_weight_rel_error']:.3f}% | {r['file_mb']:.1f} | "
              f"{r['export_s']:.1f} | {r['tensor_types']} |")


if __name__ == "__main__":
    main()
