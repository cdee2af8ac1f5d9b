"""The original study's claims and the issue's targets, checked against this study's
results.json (every number printed comes from it):

    python results/2026-11-25-workflow/claims.py results/2026-11-25-workflow/results.json
"""

import json
import sys


def verdict(paired, higher_is_better=True):
    low, high = paired["low"], paired["high"]
    if low > 0:
        return "JSD higher, interval excludes 0" if higher_is_better else "JSD higher (worse)"
    if high < 0:
        return "JSD lower, interval excludes 0"
    return "not resolved: the interval includes 0"


def stat(s, key, fmt="{:.4f}"):
    v = s[key]
    return (fmt + " ± " + fmt).format(v["mean"], v["std"]) if v["n"] > 1 else fmt.format(v["mean"])


def paired_rows(who, model, kl):
    """The F1 and ROUGE-L claims of ``model`` against KL, with its paired bootstrap interval."""
    rows = []
    for label, key in (("higher token F1", "f1"), ("higher ROUGE-L", "rougeL")):
        p = model["paired_vs_kl"][key]
        rows.append((f"{who} has {label} than KL", f"{stat(model, key)} vs {stat(kl, key)}; paired "
                     f"{p['diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]", verdict(p)))
    return rows


def main(path):
    results = json.loads(open(path).read())
    s = results["summary"]
    jsd, kl = s["jsd"], s["kl"]
    rows = []
    rows += paired_rows("JSD", jsd, kl)
    rows.append(("JSD reaches a lower loss than KL (held-out NLL per token)",
                 f"{stat(jsd, 'nll_per_token')} vs {stat(kl, 'nll_per_token')} "
                 f"({jsd['relative_to_kl']['nll_per_token']:+.1%})", "see the seeds' spread"))
    rows.append(("... (final training CE, same batches)",
                 f"{stat(jsd, 'class_loss.final')} vs {stat(kl, 'class_loss.final')} "
                 f"({jsd['relative_to_kl']['class_loss.final']:+.1%})", ""))
    rows.append(("12.5% lower loss variance (CE, last 25% of steps)",
                 f"{stat(jsd, 'class_loss.tail_variance')} vs {stat(kl, 'class_loss.tail_variance')} "
                 f"({jsd['relative_to_kl']['class_loss.tail_variance']:+.1%})", ""))
    rows.append(("20% faster convergence (steps to within 5% of the final CE)",
                 f"{stat(jsd, 'class_loss.convergence_step', '{:.0f}')} vs "
                 f"{stat(kl, 'class_loss.convergence_step', '{:.0f}')} "
                 f"({jsd['relative_to_kl']['class_loss.convergence_step']:+.1%})", ""))
    rows.append(("F1 0.9125", f"JSD {stat(jsd, 'f1')}, teacher {stat(s[next(iter(s))], 'f1')}", ""))
    # the same claims for JSD on the student's own samples (GKD), at 300 steps and at 420 (~100k tokens)
    for name, who in (("on_policy_jsd", "on-policy JSD (300 steps)"), ("on_policy_jsd_420", "on-policy JSD (420 steps)")):
        if name not in s:
            continue
        gkd = s[name]
        rows += paired_rows(who, gkd, kl)
        rows.append((f"{who} reaches a lower held-out NLL than KL",
                     f"{stat(gkd, 'nll_per_token')} vs {stat(kl, 'nll_per_token')} "
                     f"({gkd['relative_to_kl']['nll_per_token']:+.1%})", "see the seeds' spread"))
    print("| claim | measured (JSD vs KL, mean ± std over seeds) | verdict |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("| model | ROUGE-L share of the tuned teacher's (target >= 80%) | NLL minus the teacher's (target <= 0.5) |")
    print("|---|---|---|")
    for name, v in s.items():
        if "vs_teacher" in v:
            share, gap = v["vs_teacher"]["rougeL_share"], v["vs_teacher"]["nll_gap"]
            print(f"| {name} | {share:.1%} ({'met' if share >= 0.8 else f'missed by {0.8 - share:.1%} points'}) | "
                  f"{gap:+.3f} ({'met' if gap <= 0.5 else f'missed by {gap - 0.5:.3f}'}) |")


if __name__ == "__main__":
    main(sys.argv[1])
