"""The markdown report: the summary table (mean ± std over seeds, relative differences
against the baseline), the paired comparisons, and the per-category scores."""

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

def fmt_stat(stat: Dict[str, float]) -> str:
    """``mean ± std`` of a statistic over several runs, ``mean`` of one."""
    if stat["n"] > 1:
        return f"{stat['mean']:.4g} ± {stat['std']:.2g}"
    return f"{stat['mean']:.4g}"


def per_category_tables(models: List[Dict[str, Any]], names: List[str]) -> List[str]:
    """Markdown lines of the per-category ROUGE-L / token F1 and reference NLL of each name,
    each the mean over the name's runs (seeds)."""
    runs = defaultdict(list)
    for m in models:
        runs[m["name"]].append(m["per_category"])
    cats = sorted({c for m in models for c in m["per_category"]})

    def mean(name: str, cat: str, key: str) -> Optional[float]:
        values = [pc[cat][key] for pc in runs[name] if cat in pc and key in pc[cat]]
        return sum(values) / len(values) if values else None

    def cell(name: str, cat: str, keys: Tuple[str, ...]) -> str:
        values = [mean(name, cat, k) for k in keys]
        return "–" if None in values else " / ".join(f"{v:.3f}" for v in values)

    lines = []
    for title, keys in (("ROUGE-L / token F1", ("rougeL", "f1")), ("reference NLL / token", ("nll_per_token",))):
        lines += ["", f"## Per category: {title} (mean over each name's runs)", "",
                  "| category | n | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
        for c in cats:
            n = next(pc[c]["n"] for x in names for pc in runs[x] if c in pc)
            lines.append(f"| {c} | {n} | " + " | ".join(cell(x, c, keys) for x in names) + " |")
    return lines


def render_report(results: Dict[str, Any], baseline: str) -> str:
    """The markdown report; every number comes from ``results`` (results.json).

    Args:
        results (Dict[str, Any]): ``models`` (entries of :func:`~jsd_loss.eval.score_model`),
            ``summary`` (:func:`~jsd_loss.eval.summarise`) and ``examples`` (the count).
        baseline (str): the student name the others were compared with.

    Returns:
        str: the report, in markdown.
    """
    summary = results["summary"]
    names = list(summary)
    rows = [
        ("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL"), ("token F1", "f1"),
        ("exact match", "exact_match"), ("ROUGE-L vs teacher output", "teacher_rougeL"),
        ("next-token top-1 agreement with teacher", "teacher_top1_agreement"),
        ("reference NLL / token", "nll_per_token"), ("reference perplexity", "perplexity"),
        ("generation tokens/s (greedy, KV cache)", "generation_tokens_per_second"),
        ("final total loss", "loss.final"), ("final CE", "class_loss.final"), ("final KD divergence", "kd_loss.final"),
        ("steps to within 5% of final loss (smoothed)", "loss.convergence_step"),
        ("loss variance, last 25% of steps", "loss.tail_variance"),
        ("final-loss variance across seeds", "loss.seed_variance"),
        ("steps to within 5% of final CE", "class_loss.convergence_step"),
        ("CE variance, last 25% of steps", "class_loss.tail_variance"),
        ("KD divergence variance, last 25% of steps", "kd_loss.tail_variance"),
    ]
    roles = {m["name"]: m["role"] for m in results["models"]}
    students = [n for n in names[1:] if roles.get(n, "student") == "student"]  # not the references
    others = [n for n in students if n != baseline]
    header = "| metric | " + " | ".join(names) + "".join(f" | {n} vs {baseline}" for n in others) + " |"
    lines = [
        "# Distillation report",
        "",
        f"{results['examples']} eval examples; greedy decoding. Seeds per student: "
        + ", ".join(f"{n} {summary[n]['rouge1']['n']}" for n in students) + ".",
        "Mean ± std over seeds where a name has several runs. Relative difference = (value - "
        f"{baseline}) / {baseline}. Loss values are true divergences (JSD is bounded by ln 2, KL is not), "
        "so the CE row is the like-for-like comparison of training losses.",
        "",
        header,
        "|" + "---|" * (len(names) + 1 + len(others)),
    ]
    for label, key in rows:
        if not any(key in summary[n] for n in names):
            continue
        cells = [(fmt_stat(summary[n][key]) if key in summary[n] else "–") for n in names]
        for n in others:
            rel = summary[n].get(f"relative_to_{baseline}", {}).get(key)
            cells.append(f"{rel:+.1%}" if rel is not None else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    shares = [("ROUGE-L, share of the teacher's", "rougeL_share", "{:.1%}"),
              ("token F1, share of the teacher's", "f1_share", "{:.1%}"),
              ("reference NLL minus the teacher's (nats)", "nll_gap", "{:+.3f}")]
    for label, key, fmt in shares:
        cells = [fmt.format(summary[n]["vs_teacher"][key]) if "vs_teacher" in summary[n] else "–" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |" + " – |" * len(others))
    labels = dict((key, label) for label, key in rows)
    for n in others:
        paired = summary[n].get(f"paired_vs_{baseline}")
        if not paired:
            continue
        lines += ["", f"## {n} vs {baseline}, paired by prompt", "",
                  f"Difference of per-prompt means ({n} - {baseline}; each prompt's score averaged over a "
                  "name's seeds) with a 95% percentile-bootstrap interval over prompts; it reflects prompt "
                  "sampling, not seed variance (see ± above).", "",
                  "| metric | difference | 95% interval | share of resamples ≤ 0 |", "|---|---|---|---|"]
        for key, p in paired.items():
            lines.append(f"| {labels.get(key, key)} | {p['diff']:+.4f} | [{p['low']:+.4f}, {p['high']:+.4f}] | "
                         f"{p['p_not_above_zero']:.3f} |")
    lines += per_category_tables(results["models"], names)
    lines += ["", "![loss curves](loss_curves.png)", "", "![metrics](metrics.png)", ""]
    return "\n".join(lines)
