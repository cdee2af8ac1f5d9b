"""The README table of issue #18 part 4 from the eval's results.json: per setting, ROUGE-L, token F1
and held-out NLL per token (mean ± std over seeds), the share of the teacher's ROUGE-L, the NLL gap
to the teacher, and ROUGE-L paired by prompt against forward KL (95% bootstrap interval).

    python results/2026-11-25-divergences/table.py results/2026-11-25-divergences/results.json
"""

import json
import sys

LABELS = {
    "teacher_lora": "teacher (LoRA-tuned)", "student_pruned": "default student, untrained",
    "jsd": "JSD β 0.5, T 1", "kl": "forward KL", "abkd": "ABKD α 0.2, β 0.7", "akl": "AKL μ 0.5",
    "tv": "total variation", "jsd_t2": "JSD, T 2", "jsd_t2to1": "JSD, T 2 → 1 (cosine)",
}


def stat(v, digits=4):
    return f"{v['mean']:.{digits}f}" + (f" ± {v['std']:.{digits}f}" if v["n"] > 1 else "")


def main(path):
    summary = json.load(open(path))["summary"]
    print("| setting (runs) | ROUGE-L | token F1 | NLL / token | ROUGE-L share | NLL gap | ROUGE-L − KL, paired |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        share = s.get("vs_teacher", {})
        paired = s.get("paired_vs_kl", {}).get("rougeL")
        cells = [
            stat(s["rougeL"]), stat(s["f1"]), stat(s["nll_per_token"], 3),
            f"{share['rougeL_share']:.1%}" if share else "–",
            f"{share['nll_gap']:+.3f}" if share else "–",
            f"{paired['diff']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]" if paired else "–",
        ]
        print(f"| {LABELS.get(name, name)} ({s['rougeL']['n']}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
