"""Statistics over seeds: several runs of one name are seeds of one configuration. Means
and spreads per name, relative differences and a paired bootstrap against the baseline."""

from typing import Any, Dict, List

import numpy as np

from jsd_loss.eval._scoring import ANSWER_METRICS, CURVE_KEYS, PAIRED_METRICS
from jsd_loss.metrics import paired_bootstrap, relative_difference

SCORE_KEYS = list(ANSWER_METRICS) + ["teacher_rougeL", "teacher_top1_agreement", "nll_per_token", "perplexity",
                                     "generation_tokens_per_second"]
CURVE_STATS = ("final", "convergence_step", "tail_variance")
# reported as a share of the teacher's mean (the study's targets are stated that way)
SHARE_KEYS = ("rougeL", "f1")


def _stat(values) -> Dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def per_prompt(entries: List[Dict], name: str, key: str) -> List[float]:
    """Per-prompt score ``key`` of ``name``, averaged over its seeds."""
    return np.mean([e["per_example"][key] for e in entries if e["name"] == name], axis=0).tolist()


def summarise(entries: List[Dict], baseline: str, seed: int = 0) -> Dict[str, Any]:
    """
    Per name (the first entry's, the teacher, then each reference model, e.g. the teacher
    before tuning, then each student name in order): mean, std
    and count over its runs of every score, and of each training curve's final value,
    convergence step and tail variance, with the variance of the final values across seeds
    (``<curve>.seed_variance``); for each student name but the baseline, the relative
    difference of every mean (``relative_to_<baseline>``) and a paired bootstrap over
    prompts of :data:`PAIRED_METRICS` (``paired_vs_<baseline>``); for every name but the
    teacher's, ``vs_teacher``: ROUGE-L and F1 as shares of the teacher's (``rougeL_share``,
    ``f1_share``) and the reference NLL minus the teacher's (``nll_gap``, nats per token).

    Args:
        entries (List[Dict]): results entries (see :func:`~jsd_loss.eval.score_model`),
            the teacher's first.
        baseline (str): the student name the others are compared with.
        seed (int): seed of the bootstrap resampling. Default: 0

    Returns:
        Dict[str, Any]: ``summary[name][stat]`` as results.json holds it.
    """
    students = list(dict.fromkeys(e["name"] for e in entries if e["role"] == "student"))
    references = list(dict.fromkeys(e["name"] for e in entries if e["role"] == "reference"))
    summary = {}
    for name in [entries[0]["name"]] + references + students:
        group = [e for e in entries if e["name"] == name]
        stats = {k: _stat([e[k] for e in group]) for k in SCORE_KEYS if all(k in e for e in group)}
        if all("training" in e for e in group):
            for curve in CURVE_KEYS:
                if not all(curve in e["training"] for e in group):
                    continue
                for stat in CURVE_STATS:
                    stats[f"{curve}.{stat}"] = _stat([e["training"][curve][stat] for e in group])
                finals = [e["training"][curve]["final"] for e in group]
                stats[f"{curve}.seed_variance"] = {"mean": float(np.var(finals)), "std": 0.0, "n": len(finals)}
        summary[name] = stats
    teacher = summary[entries[0]["name"]]
    for name in references + students:
        summary[name]["vs_teacher"] = {
            **{f"{k}_share": summary[name][k]["mean"] / teacher[k]["mean"] if teacher[k]["mean"] else float("nan")
               for k in SHARE_KEYS},
            "nll_gap": summary[name]["nll_per_token"]["mean"] - teacher["nll_per_token"]["mean"],
        }
    base = summary[baseline]
    for name in students:
        if name == baseline:
            continue
        summary[name]["relative_to_" + baseline] = {
            k: relative_difference(v["mean"], base[k]["mean"]) for k, v in summary[name].items()
            if k in base and isinstance(v, dict) and "mean" in v
        }
        summary[name]["paired_vs_" + baseline] = {
            k: paired_bootstrap(per_prompt(entries, name, k), per_prompt(entries, baseline, k), seed=seed)
            for k in PAIRED_METRICS
        }
    return summary
