"""The README table of issue #20 part 3 from the eval's results.json: per model name, ROUGE-L and
reference NLL per token on the held-out prompts of the tuned categories (closed_qa and
information_extraction, pooled) and of the other one (summarization), mean ± std over seeds.

    python results/2026-11-25-multi-teacher/table.py outputs/multi_teacher/eval/results.json
"""

import json
import sys
from collections import defaultdict

import numpy as np

GROUPS = {"tuned": ("closed_qa", "information_extraction"), "other": ("summarization",)}


def pooled(per_category, categories):
    """ROUGE-L (mean over the prompts) and reference NLL per token (over the tokens) of these categories."""
    prompts = sum(per_category[c]["n"] for c in categories)
    tokens = sum(per_category[c]["reference_tokens"] for c in categories)
    rouge = sum(per_category[c]["rougeL"] * per_category[c]["n"] for c in categories) / prompts
    nll = sum(per_category[c]["nll_per_token"] * per_category[c]["reference_tokens"] for c in categories) / tokens
    return rouge, nll, prompts


def fmt(values):
    return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")


def main(path):
    results = json.load(open(path))
    values, prompts = defaultdict(lambda: defaultdict(list)), {}
    for m in results["models"]:
        for group, cats in GROUPS.items():
            rouge, nll, prompts[group] = pooled(m["per_category"], cats)
            values[m["name"]][f"rougeL_{group}"].append(rouge)
            values[m["name"]][f"nll_{group}"].append(nll)
    print(f"| model (runs) | ROUGE-L tuned ({prompts['tuned']}) | ROUGE-L other ({prompts['other']}) "
          f"| NLL tuned | NLL other |")
    print("|---|---|---|---|---|")
    for name, v in values.items():
        cells = [fmt(v[k]) for k in ("rougeL_tuned", "rougeL_other", "nll_tuned", "nll_other")]
        print(f"| {name} ({len(v['rougeL_tuned'])}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
