"""How far a top-k teacher (k tokens + one tail bucket) moves the KD loss from the dense one.

On real models (teacher SmolLM2-135M-Instruct, the default 90M student, both as prepared),
at every response position of the first ``--rows`` Dolly train rows: for each k, the
divergence of the (k+1)-bucket distributions against the dense divergence, for JSD (beta
0.5), forward KL and reverse KL; and the gradient w.r.t. the student logits (cosine and
relative error against the dense gradient), which is what training follows. The teacher's
log-probabilities are rounded to float16 as the cache stores them (``--log-prob-dtype``).
Also, for comparison, plain truncation (top-k renormalised, no tail bucket) for forward KL.

    python benchmarks/bench_topk_bias.py --rows 32 --json
"""

import argparse

import torch

from _common import add_json_args, add_model_dir_args, check_model_dirs, emit_json

KS = [1, 4, 16, 32, 64, 128, 256, 1024]
DIVERGENCES = {"jsd_beta0.5": 0.5, "forward_kl": 0.0, "reverse_kl": 1.0}


def response_logits(args):
    """Teacher and student logits (float32) at every label position of the rows."""
    from jsd_loss.checkpointing import load_state_dict, read_config
    from jsd_loss.datasets import dolly_dataset
    from jsd_loss.metrics import final_hidden_states
    from jsd_loss.models.smollm2 import smollm2_from_hf_state, smollm2_tokenizer
    from jsd_loss.teacher import label_positions

    tok = smollm2_tokenizer(f"{args.teacher_dir}/tokenizer.json", max_seq_len=args.max_seq_len)
    ds = dolly_dataset(tok, split="train", max_rows=args.rows)
    out = []
    for model_dir in (args.teacher_dir, args.student_dir):
        model = smollm2_from_hf_state(read_config(model_dir), load_state_dict(model_dir)).eval()
        logits = []
        with torch.no_grad():
            for i in range(len(ds)):
                sample = ds[i]
                pos = torch.from_numpy(label_positions(sample["labels"]))
                hidden = final_hidden_states(model, torch.tensor([sample["tokens"]]))[0, pos]
                logits.append(model.output(hidden).float())
        out.append(torch.cat(logits))
    return out


def truncated_forward_kl(student_logits, teacher_top):
    """Plain truncation: KL of the renormalised teacher top-k against the student's
    renormalised top-k logits (what a cache without a tail bucket gives)."""
    log_p = torch.log_softmax(teacher_top.log_probs, -1)
    log_q = torch.log_softmax(student_logits.gather(-1, teacher_top.ids), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--ks", default=",".join(map(str, KS)))
    p.add_argument("--log-prob-dtype", default="float16", choices=["float16", "float32"])
    add_model_dir_args(p)
    add_json_args(p)
    args = p.parse_args()
    check_model_dirs(args)

    from jsd_loss.losses import TopKDistribution, generalized_jsd_and_grad, topk_from_logits
    from jsd_loss.losses import topk_generalized_jsd_and_grad

    teacher_logits, student_logits = response_logits(args)
    dense = {name: generalized_jsd_and_grad(student_logits, teacher_logits, beta) for name, beta in DIVERGENCES.items()}
    report = {"rows": args.rows, "tokens": int(teacher_logits.shape[0]), "log_prob_dtype": args.log_prob_dtype,
              "dense_mean": {name: float(v.mean()) for name, (v, _) in dense.items()}, "k": {}}
    for k in map(int, args.ks.split(",")):
        top = topk_from_logits(teacher_logits, k)
        stored = top.log_probs.to(getattr(torch, args.log_prob_dtype)).float()
        top = TopKDistribution(top.ids, stored, top.tail_log_mass)
        row = {"bytes_per_token": k * (2 + (2 if args.log_prob_dtype == "float16" else 4)) + 4,
               "teacher_tail_mass_mean": float(top.tail_log_mass.exp().mean())}
        for name, beta in DIVERGENCES.items():
            value, grad = topk_generalized_jsd_and_grad(student_logits, top, beta)
            d_value, d_grad = dense[name]
            row[name] = {
                "mean": float(value.mean()),
                "relative_bias": float(value.mean() / d_value.mean() - 1),
                "grad_cosine": float(torch.nn.functional.cosine_similarity(grad.flatten(), d_grad.flatten(), dim=0)),
                "grad_relative_error": float((grad - d_grad).norm() / d_grad.norm()),
            }
        row["forward_kl_truncated_no_tail"] = {
            "mean": float(truncated_forward_kl(student_logits, top).mean()),
            "relative_bias": float(truncated_forward_kl(student_logits, top).mean() / dense["forward_kl"][0].mean() - 1),
        }
        report["k"][k] = row
    if emit_json(report, args):
        return
    print(f"{report['tokens']} response tokens of {args.rows} rows; teacher log-probs as {args.log_prob_dtype}")
    print("| k | bytes/token | teacher tail mass | " + " | ".join(
        f"{n} bias | {n} grad cos" for n in DIVERGENCES) + " | FKL truncated bias |")
    print("|---" * (3 + 2 * len(DIVERGENCES) + 1) + "|")
    for k, row in report["k"].items():
        cells = [f"{row[n]['relative_bias']:+.2%} | {row[n]['grad_cosine']:.4f}" for n in DIVERGENCES]
        print(f"| {k} | {row['bytes_per_token']} | {row['teacher_tail_mass_mean']:.4f} | " + " | ".join(cells)
              + f" | {row['forward_kl_truncated_no_tail']['relative_bias']:+.2%} |")


if __name__ == "__main__":
    main()
