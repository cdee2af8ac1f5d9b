"""Scores of one model's outputs: answer quality against the references (overall, per
category, per prompt), agreement with the teacher, reference NLL (overall and per category),
and its training curve."""

import math
from collections import defaultdict
from typing import Any, Dict, List, Optional

import numpy as np

from jsd_loss.eval._examples import Example
from jsd_loss.metrics import curve_summary, exact_match, rouge, token_f1

ANSWER_METRICS = ("rouge1", "rouge2", "rougeL", "f1", "exact_match")
CURVE_KEYS = ("loss", "class_loss", "kd_loss")
# per-prompt scores kept for the paired bootstrap against the baseline
PAIRED_METRICS = ("rougeL", "f1", "teacher_rougeL")


def answer_scores(outputs: List[str], examples: List[Example]) -> Dict[str, Any]:
    """ROUGE-1/2/L, token F1 and exact match of ``outputs`` against the references: means
    (``overall``), means per category with their count (``per_category``), and the
    per-prompt scores of :data:`PAIRED_METRICS` (``per_example``)."""
    refs = [ex["response"] for ex in examples]
    per = rouge(outputs, refs)
    for p, out, ref in zip(per, outputs, refs):
        p["f1"], p["exact_match"] = token_f1(out, ref), exact_match(out, ref)
    overall = {k: float(np.mean([p[k] for p in per])) for k in ANSWER_METRICS}
    by_cat = defaultdict(list)
    for p, ex in zip(per, examples):
        by_cat[ex["category"]].append(p)
    categories = {c: {k: float(np.mean([p[k] for p in ps])) for k in ANSWER_METRICS} | {"n": len(ps)}
                  for c, ps in sorted(by_cat.items())}
    per_example = {k: [p[k] for p in per] for k in PAIRED_METRICS if k in per[0]}
    return {"overall": overall, "per_category": categories, "per_example": per_example}


def score_model(
    model: Dict[str, Any],
    teacher_outputs: List[str],
    teacher_tf: Dict[str, List],
    examples: List[Example],
    convergence_tolerance: float = 0.05,
    variance_last_fraction: float = 0.25,
) -> Dict[str, Any]:
    """
    The results entry of one model.

    Args:
        model (Dict[str, Any]): ``name``, ``role``, ``checkpoint_dir``, its greedy
            ``outputs``, its teacher-forced predictions ``tf`` (see
            :func:`~jsd_loss.eval.teacher_forced`) and its training-log ``records`` (None
            when there is no log).
        teacher_outputs (List[str]): the teacher's greedy outputs.
        teacher_tf (Dict[str, List]): the teacher's teacher-forced predictions.
        examples (List[Example]): the eval set.
        convergence_tolerance (float): see :func:`~jsd_loss.metrics.curve_summary`. Default: 0.05
        variance_last_fraction (float): see :func:`~jsd_loss.metrics.curve_summary`. Default: 0.25

    Returns:
        Dict[str, Any]: every number of the model, as results.json holds it.
    """
    answers = answer_scores(model["outputs"], examples)
    agree_rouge = rouge(model["outputs"], teacher_outputs)
    tf = model["tf"]
    tokens = sum(tf["n_tokens"])
    agree = sum(int((a == b).sum()) for a, b in zip(tf["argmax"], teacher_tf["argmax"]))
    entry = {
        "name": model["name"], "role": model["role"], "checkpoint_dir": str(model["checkpoint_dir"]),
        **answers["overall"],
        "per_category": answers["per_category"],
        "teacher_rougeL": float(np.mean([r["rougeL"] for r in agree_rouge])),
        "per_example": {**answers["per_example"], "teacher_rougeL": [r["rougeL"] for r in agree_rouge]},
        "teacher_top1_agreement": agree / max(tokens, 1),
        "nll_per_token": sum(tf["nll"]) / max(tokens, 1),
        "outputs": model["outputs"],
    }
    entry["perplexity"] = math.exp(entry["nll_per_token"])
    nll_sums, token_sums = defaultdict(float), defaultdict(int)
    for ex, nll, n in zip(examples, tf["nll"], tf["n_tokens"]):
        nll_sums[ex["category"]] += nll
        token_sums[ex["category"]] += n
    for c, scores in entry["per_category"].items():
        scores["nll_per_token"] = nll_sums[c] / max(token_sums[c], 1)
        scores["reference_tokens"] = token_sums[c]
    for key in ("quantize", "generation_tokens_per_second"):
        if model.get(key) is not None:
            entry[key] = model[key]
    records: Optional[List[dict]] = model["records"]
    if records is not None:
        entry["training"] = {k: curve_summary(records, k, convergence_tolerance, variance_last_fraction)
                             for k in CURVE_KEYS if any(k in r for r in records)}
        entry["curves"] = {k: [[r["step"], r[k]] for r in records if k in r] for k in CURVE_KEYS}
    return entry
